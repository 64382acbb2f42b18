"""Every training stage under several processes (DDP): run each stage's quick config through the CLI and compare the
trained weights of every process (they must be identical).

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/ddp_stage_check.py \
        --root /tmp/ddp-check --json /tmp/ddp-check.json

Builds a quick model directory (tokenizer, clip, vae, teacher) in ROOT/model, then trains student, distill, ufogen
and decoder from it. Each process writes its trained modules to ROOT/runs/STAGE/weights_rankK.safetensors; the main
process writes, per stage, the `--json` summary's num_processes and the largest weight difference between processes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from pocketdiff.training.stages import STAGES

RANK = int(os.environ.get("RANK", "0"))
SEEN: dict = {}

for _cls in STAGES.values():  # remember the modules each stage trains (what compute_loss is given)
    def _recording(self, models, frozen, batch, _orig=_cls.compute_loss):
        SEEN["models"] = models
        return _orig(self, models, frozen, batch)

    _cls.compute_loss = _recording


def commands(root: Path) -> dict[str, list[str]]:
    m, r = root / "model", root / "runs"
    quick = ["--preset", "quick"]

    def run(stage: str, export: Path, *extra: str) -> list[str]:
        return ["train", stage, *quick, "--out", str(r / stage), "--export", str(export),
                "--json", str(r / f"{stage}.json"), *extra]

    return {
        "tokenizer": run("tokenizer", m / "tokenizer"),
        "clip": run("clip", m / "text_encoder", "--set", f"options.tokenizer_dir={m / 'tokenizer'}"),
        "vae": run("vae", m / "vae"),
        "teacher": run("teacher", m / "unet", "--set", f"options.model_dir={m}"),
        "student": run("student", r / "export_student", "--teacher", str(m)),
        "distill": run("distill", r / "export_distill", "--teacher", str(m)),
        "ufogen": run("ufogen", r / "export_ufogen", "--set", f"options.model_dir={m}",
                      "--set", f"options.init_unet={m / 'unet'}"),
        "decoder": run("decoder", r / "export_decoder", "--set", f"options.model_dir={m}"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    from pocketdiff.cli import main as cli

    results = {}
    for stage, argv in commands(a.root).items():
        SEEN.clear()
        try:
            cli(argv)
        except SystemExit as e:
            if e.code:
                raise
        out = a.root / "runs" / stage
        if "models" in SEEN:
            weights = {f"{k}.{n}": v.detach().contiguous().clone() for k, mod in SEEN["models"].items()
                       for n, v in getattr(mod, "module", mod).state_dict().items()}
            save_file(weights, str(out / f"weights_rank{RANK}.safetensors"))
        results[stage] = out
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    if RANK != 0:
        return
    report = {}
    for stage, out in results.items():
        summary = json.loads((out.parent / f"{stage}.json").read_text())
        files = sorted(out.glob("weights_rank*.safetensors"))
        diff = None
        if files:
            ref = load_file(str(files[0]))
            diff = max(max((load_file(str(f))[k].float() - ref[k].float()).abs().max().item() for k in ref)
                       for f in files[1:]) if len(files) > 1 else 0.0
        report[stage] = {"num_processes": summary["num_processes"], "steps": summary["step"],
                         "processes_compared": len(files), "max_weight_diff_between_processes": diff}
    from pocketdiff.io import write_text_atomic

    write_text_atomic(a.json, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
