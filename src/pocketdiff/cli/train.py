"""`pocketdiff train STAGE`: one command per registered stage (pocketdiff.training.stages.STAGES).

    pocketdiff train vae [--config vae|PATH.yaml] [--preset quick] [--out DIR] [--resume] [--json PATH]
                         [--set max_steps=100 --set options.kl_weight=1e-5]
    pocketdiff train distill --teacher models/shapes --teacher-steps 32 --student-steps 16 [--student DIR|ARCH]
        [--teacher-unet DIR] [--p 0.1] [--w-range 2 14] [--gamma auto|0.2] [--export DIR]   (+ the options above)
    pocketdiff train student --teacher models/shapes --arch mobilediffusion [--p-drop-tf 0.1] [--p-drop-res 0.05]

`--config` takes a shipped config's name (`pocketdiff/configs/shapes/NAME.yaml`, found through the package, not the
working directory; default: the stage's own) or a path to a YAML file. `distill` and `student` map their flags onto the stage's config options (a flag left out keeps the config's value;
`--set options.K=V` reaches every option).

Checkpoints and log.jsonl go to --out (default: the config's out_dir, else runs/<stage>/); the final component to
--export if given, else inside the run directory (RUN/export/NAME, NAME the last part of the config's export_dir):
a run never replaces a shipped model unless that directory is named with --export. Bad input raises PocketDiffError
subclasses (the main CLI maps them to exit 2).

OMP_WAIT_POLICY=PASSIVE is set here (if unset) because OpenMP reads it when torch is first imported; with the
default spin-waiting a 2-core machine shared with another process slows 3-8x (shared/reference/measured.md).
If the main CLI imports torch before this module, it must set it itself, first thing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # noqa: E402  (must precede the torch import below)

from pathlib import Path

import typer

from pocketdiff.errors import DataError
from pocketdiff.training.config import parse_set
from pocketdiff.training.run import run_stage
from pocketdiff.training.stages import STAGES

app = typer.Typer(help="Train one pipeline component (checkpoints and the export in the run directory; "
                  "--export PATH to publish elsewhere).",
                  no_args_is_help=True)



def echo_summary(summary: dict) -> None:
    """Print a training summary (under `accelerate launch`, by the main process alone); an interrupted run exits 130
    with the way to continue."""
    main = int(os.environ.get("RANK", "0")) == 0
    for key, value in summary.items() if main else ():
        typer.echo(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if summary["stopped"] == "interrupted":
        if main:
            typer.echo(f"interrupted at step {summary['step']} (checkpointed); continue with --resume", err=True)
        raise typer.Exit(130)


def _command(name: str):
    def command(
        config: str = typer.Option(None, "--config", "-c", help=f"shipped config NAME or YAML PATH [default: {name}]"),
        preset: str = typer.Option(None, "--preset", "-p", help="named preset from the config's presets: section"),
        out: Path = typer.Option(None, "--out", "-o", help="run directory for checkpoints and log.jsonl"),
        resume: bool = typer.Option(False, "--resume", help="continue exactly from the run directory's checkpoint"),
        export: Path = typer.Option(None, "--export", help="where the trained component goes [default: "
                                    "RUN/export/NAME]; name a shipped model's directory to replace it"),
        json_path: Path = typer.Option(None, "--json", help="write the final summary (metrics, times) as JSON"),
        set_: list[str] = typer.Option(None, "--set", help="override a config key: --set options.kl_weight=1e-5"),
    ) -> None:
        overrides = parse_set(set_)
        if export is not None:
            overrides["export_dir"] = str(export)
        echo_summary(run_stage(name, config, preset, out, resume, json_path, overrides))

    command.__doc__ = (STAGES[name].__doc__ or f"Train the {name} stage.").strip().splitlines()[0]
    return command


for _name in STAGES:
    if _name not in ("student", "distill", "vpred"):  # below: the same command with the stage's own flags
        app.command(_name)(_command(_name))


@app.command("vpred")
def vpred(
    teacher: Path = typer.Option(None, "--teacher", help="the epsilon-prediction model directory (SD-1.5 layout)"),
    data: str = typer.Option(None, "--data", help="training images: a folder of captioned images"),
    resolution: int = typer.Option(None, "--resolution", help="image size [default: the VAE's, 512 for SD-1.5]"),
    config: str = typer.Option(None, "--config", "-c", help="shipped config NAME or YAML PATH [default: vpred]"),
    preset: str = typer.Option(None, "--preset", "-p"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory for checkpoints and log.jsonl"),
    export: Path = typer.Option(None, "--export", help="the v-prediction model directory [RUN/export/model]"),
    resume: bool = typer.Option(False, "--resume"),
    json_path: Path = typer.Option(None, "--json"),
    set_: list[str] = typer.Option(None, "--set", help="override a config key: --set max_steps=2000"),
) -> None:
    """Fine-tune an epsilon-prediction teacher (SD-1.5) to predict v, SnapFusion's first step."""
    flags = {"teacher_dir": teacher and str(teacher), "data": data, "resolution": resolution}
    overrides = parse_set(set_)
    overrides.setdefault("options", {}).update({k: v for k, v in flags.items() if v is not None})
    if export is not None:
        overrides["export_dir"] = str(export)
    echo_summary(run_stage("vpred", config, preset, out, resume, json_path, overrides))


@app.command("student")
def student(
    teacher: Path = typer.Option(None, "--teacher", help="trained model dir (its unet/ teaches) [default: the default model]"),
    arch: str = typer.Option(None, "--arch", help="student: preset name, spec file or FlexUNet dir [default: teacher's]"),
    teacher_unet: Path = typer.Option(None, "--teacher-unet", help="teach with this UNet dir instead of TEACHER/unet"),
    p_drop_tf: float = typer.Option(None, help="robust training: P(transformer block -> identity) per step"),
    p_drop_res: float = typer.Option(None, help="robust training: P(ResNet block -> identity) per step"),
    attention: str = typer.Option(None, "--attention", help="relu | softmax: switch the student's attention (same "
                                  "weights) before training; with --arch PARENT --teacher-unet PARENT: MobileDiffusion's "
                                  "ReLU fine-tune"),
    config: str = typer.Option(None, "--config", "-c", help="shipped config NAME or YAML PATH [default: student]"),
    preset: str = typer.Option(None, "--preset", "-p"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory for checkpoints and log.jsonl"),
    export: Path = typer.Option(None, "--export", help="where the trained student goes [RUN/export/unet_student]"),
    resume: bool = typer.Option(False, "--resume"),
    json_path: Path = typer.Option(None, "--json"),
    set_: list[str] = typer.Option(None, "--set", help="override a config key: --set options.w_feat=0.5"),
) -> None:
    """Distil a student UNet from the teacher (task + output + feature losses) with robust training."""
    flags = {"teacher_dir": teacher and str(teacher), "teacher_unet": teacher_unet and str(teacher_unet), "arch": arch,
             "p_drop_tf": p_drop_tf, "p_drop_res": p_drop_res, "attention": attention}
    overrides = parse_set(set_)
    overrides.setdefault("options", {}).update({k: v for k, v in flags.items() if v is not None})
    if export is not None:
        overrides["export_dir"] = str(export)
    echo_summary(run_stage("student", config, preset, out, resume, json_path, overrides))


def _gamma(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise DataError(f"--gamma {value!r}: 'auto' or a number (e.g. 0.2)") from None


@app.command("distill")
def distill(
    teacher: Path = typer.Option(None, "--teacher", help="teacher model dir (text encoder, VAE, scheduler, unet/) [default: the default model]"),
    teacher_unet: Path = typer.Option(None, "--teacher-unet", help="another teacher UNet dir (e.g. the 16-step student)"),
    student: str = typer.Option(None, "--student", help="init: a UNet dir or a preset/spec [default: the teacher]"),
    teacher_steps: int = typer.Option(None, "--teacher-steps",
                                      help="teacher DDIM steps: 2 x --student-steps (SnapFusion), or another multiple"),
    student_steps: int = typer.Option(None, "--student-steps", help="student DDIM steps"),
    p: float = typer.Option(None, "--p", help="probability of the CFG loss (else vanilla)"),
    w_range: tuple[float, float] = typer.Option(None, "--w-range", show_default=False,
                                                help="W_MIN W_MAX: guidance range of the CFG loss (2 14)"),
    gamma: str = typer.Option(None, "--gamma", help="weight of L_ori: auto | a number"),
    export: Path = typer.Option(None, "--export", help="where the student UNet goes [default: RUN/export/unet_sN]"),
    config: str = typer.Option(None, "--config", "-c", help="shipped config NAME or YAML PATH [default: distill]"),
    preset: str = typer.Option(None, "--preset", help="named preset of the config (quick: a seconds-long smoke run)"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory for checkpoints and log.jsonl"),
    resume: bool = typer.Option(False, "--resume"),
    json_path: Path = typer.Option(None, "--json", help="write the final summary as JSON"),
    set_: list[str] = typer.Option(None, "--set", help="any other config key: --set max_steps=500"),
) -> None:
    """Distil a teacher into a student taking half the DDIM steps (one halving per run)."""
    from pocketdiff.training.config import deep_merge

    if teacher_steps is None and student_steps is not None:
        teacher_steps = 2 * student_steps
    if student_steps is None and teacher_steps is not None:
        student_steps = teacher_steps // 2
    flags = {"teacher_dir": teacher, "teacher_unet": teacher_unet, "student": student, "teacher_steps": teacher_steps,
             "student_steps": student_steps, "p": p, "w_range": None if not w_range or w_range[0] is None else list(w_range),
             "gamma": None if gamma is None else _gamma(gamma)}
    options = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
    overrides = deep_merge({"options": options, **({"export_dir": str(export)} if export else {})}, parse_set(set_))
    echo_summary(run_stage("distill", config, preset, out, resume, json_path, overrides))


if __name__ == "__main__":
    app()
