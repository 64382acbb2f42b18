"""Calibrate the UFOGen stage's collapse check: the `seed_diversity` it logs, for saved UNets as generators.

    python scripts/ufogen_seed_diversity.py --unet student8=models/shapes/unet_s8 --unet ufogen=runs/ufogen/unet \
        [--batches 8] [--batch-size 16] --json docs/results/one-step/seed_diversity_calibration.json

For each UNet, over --batches training batches of the `ufogen` stage (its data stream, seed 0, no caption dropout):
the spread of the one-step x0' = G(x_T, T) across `collapse_seeds` noise draws of each of `collapse_prompts` captions
over the real latents' spread across the batch (`UFOGenStage.seed_spread`), i.e. the value that
`options.collapse_min_diversity` is compared with.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import torch

    from pocketdiff.diffusion import noised_latents
    from pocketdiff.io import write_json_atomic
    from pocketdiff.text.clip import encode_prompts
    from pocketdiff.training.run import load_config
    from pocketdiff.training.stages.ufogen import UFOGenStage, pairwise_spread

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unet", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {}
    for name, unet in (item.partition("=")[::2] for item in a.unet):
        cfg = load_config("ufogen", None, {"batch_size": a.batch_size, "options": {"init_unet": unet, "cfg_dropout": 0.0}})
        stage = UFOGenStage(cfg)
        frozen = stage.build_frozen()
        g = stage._init_unet.eval()
        ratios = []
        with torch.no_grad():
            for i in range(a.batches):
                b = stage.batch_at(i)
                x0, *_ = noised_latents(stage.scheduler, frozen["vae"], b, True)
                ctx = encode_prompts(stage.tokenizer, frozen["text_encoder"], b["caption"])
                spread = stage.seed_spread(g, ctx, x0.shape[1:], int(b["noise_seed"][0]))
                ratios.append((spread / pairwise_spread(x0)).item())
        out[name] = {"unet": unet, "seed_diversity": sum(ratios) / len(ratios), "per_batch": ratios}
        print(f"{name:20s} seed diversity {out[name]['seed_diversity']:.3f} (batches {min(ratios):.3f}-{max(ratios):.3f})")
    result = {"collapse_prompts": stage.opts.collapse_prompts, "collapse_seeds": stage.opts.collapse_seeds,
              "batches": a.batches, "batch_size": a.batch_size, "models": out}
    if a.json:
        write_json_atomic(a.json, result)
    return result


if __name__ == "__main__":
    main()
