"""Which judge verdicts a decoder flips against the original decoder, and how many random noise at a PSNR flips.

    python scripts/decoder_flips.py --model runs/shapes_c2 [--unet DIR] --vae original=models/shapes/vae \
        --vae pruned=models/shapes/vae_pruned [--prompts heldout-single] [--steps 50] [--seeds 1] \
        [--noise-db 30 36 40] [--json PATH]

The pipeline's latents (the model's UNet, or --unet; 50 DDIM steps, w 2, seed = prompt index, as
benchmarks/shapes_decoders.py) are decoded by every --vae; each decoder's verdicts are compared with the first one's:
verdicts lost and gained, which attribute changed, and the accuracy change with a 95% interval from the paired
per-image differences. With --seeds K every prompt is sampled K times (seeds i, 1000 + i, ...): the change one decoder
makes is a few flips among hundreds of images, so one seed per prompt leaves an interval of +-3 points. Then Gaussian
noise (white, and blurred: low-frequency) is added to the first decoder's images at each --noise-db PSNR, three seeds
each: a decoder whose error is noise-like should flip about as many verdicts as noise at its PSNR does.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pocketdiff.data.shapes import to_uint8
from pocketdiff.evaluation.judge import judge
from pocketdiff.evaluation.suite import load_prompts, paired_change, sample_prompts
from pocketdiff.io import write_json_atomic
from pocketdiff.pruning.decoder import vae_class
from pocketdiff.sampling.pipeline import load_pipeline


def verdicts(images: np.ndarray, prompts: list[str]) -> list[dict]:
    return [judge(im, p) for im, p in zip(images, prompts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/shapes"))
    ap.add_argument("--unet", type=Path, default=None, help="a UNet directory to sample with instead of the model's "
                    "(e.g. models/shapes/unet_s8: the default pipeline's student)")
    ap.add_argument("--vae", action="append", required=True, help="NAME=DIR (the first is the reference)")
    ap.add_argument("--prompts", default="heldout-single")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--seeds", type=int, default=1, help="samples per prompt (seeds i, 1000 + i, ...)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="add this to every seed: a fresh set of images to confirm a choice made on another")
    ap.add_argument("--noise-db", type=float, nargs="*", default=[30, 36, 40])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    prompts, _ = load_prompts(a.prompts, None)
    if len(prompts) > 1000 and a.seeds > 1:
        raise SystemExit("--seeds > 1 needs at most 1,000 prompts (seed offsets are multiples of 1,000)")
    pipe = load_pipeline(a.model, unet_dir=a.unet, scheduler=a.scheduler)
    z = torch.cat([torch.from_numpy(g.images) for s in range(a.seeds) for g in sample_prompts(
        pipe, prompts, a.steps, a.guidance, seed=a.first_seed + 1000 * s, decode=False,
        desc=f"seed offset {a.first_seed + 1000 * s}")]).float()
    prompts = prompts * a.seeds
    images = {}
    with torch.no_grad():
        for item in a.vae:
            name, _, path = item.partition("=")
            vae = vae_class(Path(path)).from_pretrained(path).eval()
            images[name] = torch.cat([vae.decode(c / vae.config.scaling_factor).sample.float() for c in z.split(50)])
    ref_name = next(iter(images))
    ref = verdicts(to_uint8(images[ref_name]), prompts)
    report = {"unet": str(a.unet or a.model / "unet"),
              "prompts": a.prompts, "steps": a.steps, "guidance": a.guidance, "scheduler": a.scheduler,
              "seeds": a.seeds, "first_seed": a.first_seed, "images": len(prompts),
              "reference": {"name": ref_name, "accuracy": float(np.mean([r["correct"] for r in ref]))},
              "decoders": {}, "noise": []}

    def compare(new: list[dict]) -> dict:
        lost = [i for i in range(len(ref)) if ref[i]["correct"] and not new[i]["correct"]]
        gained = [i for i in range(len(ref)) if new[i]["correct"] and not ref[i]["correct"]]
        changed = collections.Counter(k for i in lost + gained for k in ref[i]
                                      if k != "correct" and ref[i][k] != new[i][k])
        # paired: the same latents, only the decoder differs
        pc = paired_change([n["correct"] for n in new], [r["correct"] for r in ref])
        return {"accuracy": float(np.mean([r["correct"] for r in new])), "change": pc["change"],
                "change_ci95": pc["change_ci95"], "lost": len(lost), "gained": len(gained),
                "attributes_changed": dict(changed), "lost_prompts": [prompts[i] for i in lost]}

    for name, x in list(images.items())[1:]:
        mse = ((x.clamp(-1, 1) - images[ref_name].clamp(-1, 1)) ** 2).mean() / 4
        report["decoders"][name] = {"psnr": float(10 * torch.log10(1 / mse)),
                                    **compare(verdicts(to_uint8(x), prompts))}
        r = report["decoders"][name]
        lo, hi = (100 * c for c in r["change_ci95"])
        print(f"{name}: {r['psnr']:.1f} dB, accuracy {100 * r['accuracy']:.1f}% (reference "
              f"{100 * report['reference']['accuracy']:.1f}%), change {100 * r['change']:+.1f} points "
              f"(95% {lo:+.1f} to {hi:+.1f}), lost {r['lost']}, gained {r['gained']}, "
              f"attributes {r['attributes_changed']}")
    x = images[ref_name].clamp(-1, 1)
    blur = torch.ones(3, 1, 3, 3) / 9
    for db in a.noise_db:
        for kind in ("white", "blurred"):
            for seed in range(3):
                n = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
                if kind == "blurred":
                    for _ in range(2):
                        n = F.conv2d(n, blur, padding=1, groups=3)
                    n = n / n.std()
                sigma = 2 * 10 ** (-db / 20)  # images span 2: PSNR = 10 log10(4 / MSE)
                r = compare(verdicts(to_uint8(x + sigma * n), prompts))
                report["noise"].append({"db": db, "kind": kind, "seed": seed, **{k: r[k] for k in
                                        ("accuracy", "lost", "gained")}})
            rows = [r for r in report["noise"] if r["db"] == db and r["kind"] == kind]
            print(f"noise {db:g} dB {kind}: accuracy {100 * np.mean([r['accuracy'] for r in rows]):.1f}%, "
                  f"lost {np.mean([r['lost'] for r in rows]):.1f}, gained {np.mean([r['gained'] for r in rows]):.1f}")
    if a.json:
        write_json_atomic(a.json, report)


if __name__ == "__main__":
    main()
