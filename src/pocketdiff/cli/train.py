"""`pocketdiff train STAGE`: one command per registered stage (pocketdiff.training.stages.STAGES).

    pocketdiff train vae --config configs/shapes/vae.yaml [--preset quick] [--out DIR] [--resume] [--json PATH]
                         [--set max_steps=100 --set options.kl_weight=1e-5]

Checkpoints and log.jsonl go to --out (default: the config's out_dir, else runs/<stage>/); the final component to
--export if given, else inside the run directory (RUN/export/NAME, NAME the last part of the config's export_dir):
a run never replaces a shipped model unless that directory is named with --export. Bad input raises PocketDiffError subclasses (the main CLI maps them to exit 2).

OMP_WAIT_POLICY=PASSIVE is set here (if unset) because OpenMP reads it when torch is first imported; with the
default spin-waiting a 2-core machine shared with another process slows 3-8x (shared/reference/measured.md).
If the main CLI imports torch before this module, it must set it itself, first thing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # noqa: E402  (must precede the torch import below)

import json
from pathlib import Path

import typer

from pocketdiff.io import write_text_atomic
from pocketdiff.training.config import ConfigError, load_config, parse_set
from pocketdiff.training.loop import default_export_dir, train
from pocketdiff.training.stages import STAGES, get_stage

app = typer.Typer(help="Train one pipeline component (checkpoints and the export in the run directory; "
                  "--export PATH to publish elsewhere).",
                  no_args_is_help=True)


def run_stage(
    name: str,
    config: str | Path | None = None,
    preset: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    json_path: str | Path | None = None,
    overrides: dict | None = None,
) -> dict:
    """Load `config` (default configs/shapes/NAME.yaml), train stage `name`, return (and optionally write) the summary.

    The export goes inside the run directory (`default_export_dir`) unless `overrides` name an `export_dir` (the
    CLI's `--export PATH` / `--set export_dir=PATH`): a config's `export_dir` (the shipped configs name the shipped
    model) only names the component, so no run replaces a shipped model unless the user asks for it."""
    stage_cls = get_stage(name)
    config = Path(config) if config is not None else Path(f"configs/shapes/{name}.yaml")
    cfg = load_config(config, preset, overrides)  # validates options against the stage the file names
    if cfg.stage != name:
        raise ConfigError(f"{config}: stage: {cfg.stage!r}, but this command trains {name!r}")
    stage = stage_cls(cfg)  # a stage may fill in its export_dir (distill: "{teacher_dir}/unet_s{student_steps}")
    run_dir = Path(out) if out is not None else cfg.run_dir
    if "export_dir" not in (overrides or {}):  # never over a shipped model unless the user names it (--export)
        cfg.export_dir = str(default_export_dir(run_dir, cfg.export_dir))
    summary = train(stage, cfg, out_dir=run_dir, resume=resume)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(summary, indent=1))
    return summary


def echo_summary(summary: dict) -> None:
    """Print a training summary; an interrupted run exits 130 with the way to continue."""
    for key, value in summary.items():
        typer.echo(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if summary["stopped"] == "interrupted":
        typer.echo(f"interrupted at step {summary['step']} (checkpointed); continue with --resume", err=True)
        raise typer.Exit(130)


def _command(name: str):
    def command(
        config: Path = typer.Option(None, "--config", "-c", help=f"YAML config [default: configs/shapes/{name}.yaml]"),
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
    if _name != "student":
        app.command(_name)(_command(_name))


@app.command("student")
def student(
    teacher: Path = typer.Option(None, "--teacher", help="trained model dir (its unet/ teaches) [config: models/shapes]"),
    arch: str = typer.Option(None, "--arch", help="student: preset name, spec file or FlexUNet dir [default: teacher's]"),
    p_drop_tf: float = typer.Option(None, help="robust training: P(transformer block -> identity) per step"),
    p_drop_res: float = typer.Option(None, help="robust training: P(ResNet block -> identity) per step"),
    config: Path = typer.Option(Path("configs/shapes/student.yaml"), "--config", "-c"),
    preset: str = typer.Option(None, "--preset", "-p"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory for checkpoints and log.jsonl"),
    export: Path = typer.Option(None, "--export", help="where the trained student goes [RUN/export/unet_student]"),
    resume: bool = typer.Option(False, "--resume"),
    json_path: Path = typer.Option(None, "--json"),
    set_: list[str] = typer.Option(None, "--set", help="override a config key: --set options.w_feat=0.5"),
) -> None:
    """Distil a student UNet from the teacher (task + output + feature losses) with robust training."""
    flags = {"teacher_dir": teacher and str(teacher), "arch": arch, "p_drop_tf": p_drop_tf, "p_drop_res": p_drop_res}
    overrides = parse_set(set_)
    overrides.setdefault("options", {}).update({k: v for k, v in flags.items() if v is not None})
    if export is not None:
        overrides["export_dir"] = str(export)
    echo_summary(run_stage("student", config, preset, out, resume, json_path, overrides))


if __name__ == "__main__":
    app()
