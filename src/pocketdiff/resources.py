"""Files that ship inside the package, found through `importlib.resources` rather than the working directory, so
an installed (non-editable) pocketdiff finds them from any directory.

    config_path("student")              # the shipped config pocketdiff/configs/shapes/student.yaml
    config_path("my/student.yaml")      # a path is a path
    config_names()                      # ['clip', 'decoder', ...]

A config reference is a NAME when it has no directory part and no .yaml/.yml suffix; anything else is a path.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pocketdiff.errors import ConfigError

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


__all__ = ["config_names", "config_path", "is_config_name"]
