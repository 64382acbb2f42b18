"""Every training stage under several processes (DDP): run each stage's quick config through the CLI and compare the
trained weights of every process (they must be identical).

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/ddp_stage_check.py \
        --root /tmp/ddp-check --json /tmp/ddp-check.json

Builds a quick model directory (tokenizer, clip, vae, teacher) in ROOT/model, then trains student (with robust training,
and `student_kd` without), distill, ufogen and decoder from it. Each process writes its trained modules to
ROOT/runs/STAGE/weights_rankK.safetensors; the main process writes, per stage, the `--json` summary's num_processes and
the largest weight difference between processes.

`--fsdp`: each stage is trained a second time under FSDP2 (`pocketdiff.testing.force_fsdp_on_cpu`: the shipped
fsdp-8gpu.yaml's settings, Accelerate's state switched to FSDP on the CPU) into ROOT/runs/STAGE_fsdp; the report adds
the largest difference between its checkpoint (model and EMA) and the DDP run's, or that the stage refused FSDP.
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

    def run(stage: str, export: Path, *extra: str, name: str | None = None) -> list[str]:
        name = name or stage
        return ["train", stage, *quick, "--out", str(r / name), "--export", str(export),
                "--json", str(r / f"{name}.json"), *extra]

    return {
        "tokenizer": run("tokenizer", m / "tokenizer"),
        "clip": run("clip", m / "text_encoder", "--set", f"options.tokenizer_dir={m / 'tokenizer'}"),
        "vae": run("vae", m / "vae"),
        "teacher": run("teacher", m / "unet", "--set", f"options.model_dir={m}"),
        "student": run("student", r / "export_student", "--teacher", str(m)),
        # knowledge distillation without robust training: the student as FSDP can shard it
        "student_kd": run("student", r / "export_student_kd", "--teacher", str(m), "--set", "options.p_drop_tf=0",
                          "--set", "options.p_drop_res=0", name="student_kd"),
        "distill": run("distill", r / "export_distill", "--teacher", str(m)),
        "ufogen": run("ufogen", r / "export_ufogen", "--set", f"options.model_dir={m}",
                      "--set", f"options.init_unet={m / 'unet'}"),
        "decoder": run("decoder", r / "export_decoder", "--set", f"options.model_dir={m}"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--fsdp", action="store_true", help="also train each stage under FSDP2 and compare with DDP")
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
        if a.fsdp:  # the same run under FSDP2, into STAGE_fsdp (the next stages keep reading the DDP run's exports)
            from pocketdiff.testing import force_fsdp_on_cpu

            fsdp_argv = list(argv)
            for flag in ("--out", "--export", "--json"):
                i = fsdp_argv.index(flag) + 1
                fsdp_argv[i] = str(a.root / "runs" / f"{stage}_fsdp{Path(fsdp_argv[i]).suffix}")
            fsdp_argv[fsdp_argv.index("--export") + 1] = str(a.root / "runs" / f"export_{stage}_fsdp")
            undo = force_fsdp_on_cpu()
            try:
                cli(fsdp_argv)
            except SystemExit as e:
                if e.code not in (None, 0, 2):  # 2: the stage refused FSDP (its message on stderr)
                    raise
            finally:
                undo()
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
        if a.fsdp:
            fsdp_run = out.parent / f"{stage}_fsdp"
            if not (fsdp_run.parent / f"{stage}_fsdp.json").is_file():
                report[stage]["fsdp"] = "refused"
                continue
            fsdp = {"distributed": json.loads((fsdp_run.parent / f"{stage}_fsdp.json").read_text())["distributed"]}
            for f in ("model", "ema"):
                ddp_w, fsdp_w = (load_file(str(d / "checkpoint" / f"{f}.safetensors")) for d in (out, fsdp_run))
                fsdp[f"max_{f}_diff_vs_ddp"] = max((fsdp_w[k].float() - ddp_w[k].float()).abs().max().item()
                                                   for k in ddp_w)
            report[stage]["fsdp"] = fsdp
    from pocketdiff.io import write_text_atomic

    write_text_atomic(a.json, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
