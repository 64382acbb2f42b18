"""Shipped configs and the shipped model are package data: found through the package from any working directory (a
config by name, a path is a path; the model unless --model or $POCKETDIFF_MODEL names another), and the wheel
carries them."""

from __future__ import annotations

from pathlib import Path

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


def test_default_model_is_the_shipped_one_unless_the_environment_names_another(tmp_path, monkeypatch):
    from pocketdiff.errors import ModelDirError
    from pocketdiff.resources import MODEL_ENV, default_model_dir, shipped_model_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    root = Path(__file__).resolve().parents[1]
    if (root / "models" / "shapes" / "model_index.json").is_file():  # a checkout: the package's link to models/
        assert default_model_dir().resolve() == (root / "models" / "shapes").resolve()
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "mine"))
    assert default_model_dir() == tmp_path / "mine"
    monkeypatch.delenv(MODEL_ENV)
    monkeypatch.setattr("pocketdiff.resources.shipped_model_dir", lambda: tmp_path / "absent")
    with pytest.raises(ModelDirError, match=r"no shipped model in this install .*--model DIR or set \$POCKETDIFF_MODEL"):
        default_model_dir()


def test_wheel_carries_the_configs_and_the_shipped_model():
    """The build's file list (setuptools' package-data globs through the pocketdiff/shipped link), without building."""
    from setuptools import Distribution
    from setuptools.command.build_py import build_py

    root = Path(__file__).resolve().parents[1]
    if not (root / "models" / "shapes" / "model_index.json").is_file():
        pytest.skip("no shipped model in this checkout")
    import tomllib

    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    dist = Distribution({"packages": ["pocketdiff"], "package_dir": {"": str(root / "src")},
                         "package_data": package_data})
    cmd = build_py(dist)
    cmd.ensure_finalized()
    files = {f for _, _, _, names in cmd.data_files for f in names}
    assert {"configs/shapes/student.yaml", "shipped/shapes/model_index.json",
            "shipped/shapes/unet_s8/diffusion_pytorch_model.safetensors"} <= files
