"""Shipped configs are package data: found by name through the package from any working directory, a path is a path,
and the wheel carries them."""

from __future__ import annotations

import pytest

from pocketdiff.errors import ConfigError
from pocketdiff.resources import config_names, config_path
from pocketdiff.training.stages import STAGES


def test_every_stage_has_a_shipped_config_found_from_any_directory(tmp_path, monkeypatch):
    from pocketdiff.training.run import load_config

    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory
    assert set(STAGES) <= set(config_names())
    for name in STAGES:
        path = config_path(name)
        assert path.is_absolute() and path.parent.name == "shapes" and path.parent.parent.name == "configs"
        assert load_config(name, "quick").stage == name


def test_a_path_is_a_path_and_a_bad_reference_names_the_fix(tmp_path, monkeypatch):
    from pocketdiff.training.config import read_config_dict

    monkeypatch.chdir(tmp_path)
    own = tmp_path / "vae.yaml"  # a file in the working directory named like a shipped config
    own.write_text("stage: vae\nexport_dir: x\nmax_steps: 7\n")
    assert read_config_dict("vae.yaml")["max_steps"] == 7  # the path, not the shipped vae config
    assert read_config_dict("vae")["max_steps"] != 7
    with pytest.raises(ConfigError, match=r"no shipped config of that name \(known: clip, .*give a path"):
        config_path("vea")
    with pytest.raises(ConfigError, match="config file not found: sub/vae.yaml"):
        config_path("sub/vae.yaml")


def test_cli_takes_a_config_name(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pocketdiff.cli.train import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tokenizer", "--config", "tokenizer", "--preset", "quick",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "export" / "tokenizer" / "tokenizer.json").is_file()
    result = CliRunner().invoke(app, ["tokenizer", "--config", "tokenizr"])
    assert isinstance(result.exception, ConfigError) and "known: clip" in str(result.exception)
