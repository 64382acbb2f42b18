"""Files that ship inside the package, found through `importlib.resources` rather than the working directory, so
an installed (non-editable) pocketdiff finds them from any directory.

    config_path("student")              # the shipped config pocketdiff/configs/shapes/student.yaml
    config_path("my/student.yaml")      # a path is a path
    config_names()                      # ['clip', 'decoder', ...]
    default_model_dir()                 # $POCKETDIFF_MODEL, else the shipped shapes-world model

A config reference is a NAME when it has no directory part and no .yaml/.yml suffix; anything else is a path.

The shipped model: `pocketdiff/shipped` is a symbolic link to the repository's `models/` directory, and the build
copies `models/shapes` through it into the wheel as package data (`pocketdiff/shipped/shapes/`, about 55 MB). So an
editable install, a checkout on PYTHONPATH and a non-editable install all find it at the same place, and the working
directory plays no part. A command's `--model DIR` wins over `$POCKETDIFF_MODEL`, which wins over the shipped model.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from pocketdiff.errors import ConfigError, ModelDirError

MODEL_ENV = "POCKETDIFF_MODEL"

CONFIG_SUFFIXES = (".yaml", ".yml")


def _config_dir() -> Path:
    # The package is installed as plain files (setuptools wheel or editable), so the traversable is a real path.
    return Path(str(files("pocketdiff") / "configs" / "shapes"))


def config_names() -> list[str]:
    """The names of the shipped configs (`pocketdiff train STAGE --config NAME`)."""
    return sorted(p.stem for p in _config_dir().glob("*.yaml"))


def is_config_name(ref: str | Path) -> bool:
    text = str(ref)
    return "/" not in text and "\\" not in text and not text.lower().endswith(CONFIG_SUFFIXES)


def config_path(ref: str | Path) -> Path:
    """The YAML file `ref` names: a shipped config's name, or a path (checked to exist)."""
    if is_config_name(ref):
        path = _config_dir() / f"{ref}.yaml"
        if not path.is_file():
            raise ConfigError(f"config {str(ref)!r}: no shipped config of that name (known: "
                              f"{', '.join(config_names())}); give a path to use your own YAML file")
        return path
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def shipped_model_dir() -> Path:
    """Where the shipped shapes-world model lives in this install (it may be missing, e.g. in a slim build)."""
    return Path(str(files("pocketdiff") / "shipped" / "shapes"))


def default_model_dir() -> Path:
    """The model a command uses without `--model`: `$POCKETDIFF_MODEL` if set, else the shipped model."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    path = shipped_model_dir()
    if not (path / "model_index.json").is_file():
        raise ModelDirError(f"no shipped model in this install ({path} is missing); give --model DIR or set "
                            f"${MODEL_ENV}=DIR (a model directory in diffusers layout)")
    return path


def default_model_path(*parts: str) -> str:
    """`default_model_dir()` / parts, as text: the default of the training options that read the shipped model
    (`field(default_factory=...)`, so that it is looked up when a config leaves the option out)."""
    return str(default_model_dir().joinpath(*parts))


__all__ = ["MODEL_ENV", "config_names", "config_path", "default_model_dir", "default_model_path", "is_config_name",
           "shipped_model_dir"]
