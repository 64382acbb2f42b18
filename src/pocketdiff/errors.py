"""Typed errors. The CLI turns every `PocketDiffError` into a one-line message and exit code 2."""


class PocketDiffError(Exception):
    """Base class: bad input that the user can fix. The message names the problem and the way out."""


class UnknownPresetError(PocketDiffError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SpecError(PocketDiffError, ValueError):
    """An ArchSpec (or another config) failed validation; the message names the field."""


class ConfigError(SpecError):
    """A config file or override that fails validation; the message names the field."""


class WeightsError(PocketDiffError, ValueError):
    """Weights that do not fit the model, or a file that is not valid safetensors."""


class ModelDirError(PocketDiffError, FileNotFoundError):
    """A directory that is not the kind of model directory expected (missing component, no config)."""


class DataError(PocketDiffError, ValueError):
    """A dataset or prompt that cannot be used."""
