"""Train one stage from its config: what `pocketdiff train STAGE` runs, callable from Python.

    summary = run_stage("vae", preset="quick", overrides={"max_steps": 100})   # the stage's shipped config
    cfg = load_config("vae", "quick")           # a TrainConfig, options checked against the stage's Options
    cfg = load_config("my_vae.yaml")            # a path is a path (pocketdiff.resources.config_path)

`load_config` lives here rather than in `training.config` because it needs the stage registry
(`training.stages`), whose stages themselves use `training.config`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pocketdiff.errors import ConfigError
from pocketdiff.io import write_text_atomic
from pocketdiff.training.config import TrainConfig, from_dict, read_config_dict
from pocketdiff.training.loop import default_export_dir, train
from pocketdiff.training.stages import get_stage


def load_config(
    path: str | Path,
    preset: str | None = None,
    overrides: dict | None = None,
    options_cls: type | None = None,
) -> TrainConfig:
    """Read and validate a stage config. `options_cls` defaults to the registered stage's `Options`."""
    data = read_config_dict(path, preset, overrides)
    try:
        cfg = from_dict(TrainConfig, data)
        if options_cls is None:
            options_cls = get_stage(cfg.stage).Options
        cfg.options = from_dict(options_cls, cfg.options or {}, "options")
    except ConfigError as e:
        raise ConfigError(f"{Path(path).name}: {e}") from None
    return cfg


def run_stage(
    name: str,
    config: str | Path | None = None,
    preset: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    json_path: str | Path | None = None,
    overrides: dict | None = None,
) -> dict:
    """Load `config` (a shipped config's name or a YAML path; default: the shipped config NAME), train stage `name`, return (and optionally write) the summary.

    The export goes inside the run directory (`default_export_dir`) unless `overrides` name an `export_dir` (the
    CLI's `--export PATH` / `--set export_dir=PATH`): a config's `export_dir` (the shipped configs name the shipped
    model) only names the component, so no run replaces a shipped model unless the user asks for it."""
    from pocketdiff.validation import check_output_dir, check_output_file

    stage_cls = get_stage(name)
    check_output_dir("--out", out)  # outputs checked before anything loads or trains
    check_output_file("--json", json_path, (".json",))
    if (overrides or {}).get("export_dir") is not None:
        check_output_dir("--export", overrides["export_dir"])
    config = name if config is None else config
    cfg = load_config(config, preset, overrides)  # validates options against the stage the file names
    check_output_dir("--out", out if out is not None else cfg.run_dir)
    if cfg.stage != name:
        raise ConfigError(f"{config}: stage: {cfg.stage!r}, but this command trains {name!r}")
    stage = stage_cls(cfg)  # a stage may fill in its export_dir (distill: "{teacher_dir}/unet_s{student_steps}")
    run_dir = Path(out) if out is not None else cfg.run_dir
    if "export_dir" not in (overrides or {}):  # never over a shipped model unless the user names it (--export)
        cfg.export_dir = str(default_export_dir(run_dir, cfg.export_dir))
    summary = train(stage, cfg, out_dir=run_dir, resume=resume)
    if json_path is not None and int(os.environ.get("RANK", "0")) == 0:  # `accelerate launch`: written once
        write_text_atomic(json_path, json.dumps(summary, indent=1))
    return summary


__all__ = ["load_config", "run_stage"]
