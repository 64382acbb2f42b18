"""`pocketdiff distill steps`: SnapFusion's CFG-aware step distillation, flags mapped onto the `distill` stage's config.

    pocketdiff distill steps --teacher models/shapes --teacher-steps 32 --student-steps 16 [--student DIR|ARCH]
        [--teacher-unet DIR] [--p 0.1] [--w-range 2 14] [--gamma auto|0.2] [--export DIR]
        [--config configs/shapes/distill.yaml] [--preset quick] [--out DIR] [--resume] [--json PATH] [--set K=V]

Equivalent to `pocketdiff train distill --set options.teacher_dir=... ...`; a flag left out keeps the config's value.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pocketdiff.errors import DataError

app = typer.Typer(help="Step distillation (SnapFusion's CFG-aware): fewer sampling steps for a trained teacher.",
                  no_args_is_help=True)


def _gamma(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise DataError(f"--gamma {value!r}: 'auto' or a number (e.g. 0.2)") from None


@app.command("steps")
def steps(
    teacher: Path = typer.Option(None, "--teacher", help="teacher model dir (text encoder, VAE, scheduler, unet/)"),
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
    config: Path = typer.Option(Path("configs/shapes/distill.yaml"), "--config", "-c"),
    preset: str = typer.Option(None, "--preset", help="named preset of the config (quick: a seconds-long smoke run)"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory for checkpoints and log.jsonl"),
    resume: bool = typer.Option(False, "--resume"),
    json_path: Path = typer.Option(None, "--json", help="write the final summary as JSON"),
    set_: list[str] = typer.Option(None, "--set", help="any other config key: --set max_steps=500"),
) -> None:
    """Distil a teacher into a student taking half the DDIM steps (one halving per run)."""
    from pocketdiff.cli.train import echo_summary, run_stage
    from pocketdiff.training.config import deep_merge, parse_set

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
