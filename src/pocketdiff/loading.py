"""The one loader layer: every file the project reads (prompts, captions, configs, JSON, YAML, model components,
checkpoints) goes through here, and every decode / parse / deserialise error becomes a `PocketDiffError` that
names the file and the problem (the CLI prints it and exits 2, no traceback).

    text = read_text(path, what="--prompts-file")       # UTF-8 only; a bad byte is named with its offset
    rows = read_json(path)                              # JSON, with line and column of a syntax error
    unet = load_component(model_dir, "unet")            # from_pretrained(subfolder=...), strict (see below)

Model components are loaded with diffusers' / transformers' `from_pretrained(root, subfolder=NAME)` and checked
strictly: the config must be valid JSON naming a known class, the weights must be safetensors (never pickle) and
complete (a truncated file is caught before loading), and the loaded keys and shapes must match the config exactly:
"unet/ weights do not match unet/config.json: 312 missing keys, e.g. ..." rather than a silent partial load with
randomly initialised layers (what a config swapped with another model's gave before).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError, ModelDirError, PocketDiffError, WeightsError


class FileReadError(DataError):
    """A file that cannot be read or parsed (missing, not UTF-8, not valid JSON / YAML)."""


# --------------------------------------------------------------------------------------------- text files


def read_text(path: str | Path, what: str = "", error: type[PocketDiffError] = FileReadError) -> str:
    """A UTF-8 text file's content; a missing file, a directory, a permission problem or a non-UTF-8 byte raises
    `error` naming the file (and `what`, e.g. the option it was given to)."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except IsADirectoryError:
        raise error(f"{name}: is a directory, expected a file") from None
    except OSError as e:
        raise error(f"{name}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8") \
            from None


def read_lines(path: str | Path, what: str = "") -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped (a prompts file: one prompt per line)."""
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def read_json(path: str | Path, what: str = "", error: type[PocketDiffError] = FileReadError) -> Any:
    """A JSON file's content; a syntax error names the file, line and column."""
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{f'{what} ' if what else ''}{path}: not valid JSON ({e.msg} at line {e.lineno} column "
                    f"{e.colno})") from None


def read_yaml(path: str | Path, what: str = "", error: type[PocketDiffError] = FileReadError) -> Any:
    """A YAML file's content (safe_load: plain data only)."""
    import yaml

    text = read_text(path, what, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{f'{what} ' if what else ''}{path}: not valid YAML ({' '.join(str(e).split())})") from None


def parse_yaml_value(raw: str, where: str, error: type[PocketDiffError] = DataError) -> Any:
    """A YAML scalar / flow value given on the command line (`--set key=VALUE`)."""
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise error(f"{where}: {raw!r} is not valid YAML ({' '.join(str(e).split())}); quote strings, e.g. "
                    "--set 'key=\"a: b\"'") from None


# --------------------------------------------------------------------------------------------- safetensors


def check_safetensors(file: str | Path) -> None:
    """Raise `WeightsError` unless `file` is a complete safetensors file (header parses, data not truncated)."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= header_len <= size - 8:
                raise WeightsError(f"{file} is not a safetensors file (truncated or corrupt: {size} bytes)")
            header = json.loads(fh.read(header_len))
    except OSError as e:
        raise WeightsError(f"{file}: cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError):
        raise WeightsError(f"{file} is not a safetensors file (its header is not valid JSON: corrupt?)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{file} is not a safetensors file (corrupt header)")
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        raise WeightsError(f"{file} is not a safetensors file (corrupt header)") from None
    if 8 + header_len + end > size:
        raise WeightsError(f"{file} is truncated: {size} bytes, its header needs {8 + header_len + end}")


def load_safetensors(file: str | Path) -> dict:
    """`safetensors.torch.load_file`, checked first (a truncated or corrupt file names itself)."""
    from safetensors.torch import load_file

    check_safetensors(file)
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise WeightsError(f"{file} is not a valid safetensors file ({e})") from None


# --------------------------------------------------------------------------------------------- model components


def _component_class(cfg: dict, directory: Path, classes):
    """The class that loads a component directory, from its config.json (`_class_name` or `architectures`): one of
    `classes` (the project's own, passed by the caller: this layer imports no model module) or diffusers' /
    transformers' own."""
    name = cfg.get("_class_name") or (cfg.get("architectures") or [None])[0]
    for cls in classes or ():
        if cls.__name__ == name:
            return cls
    if name in ("UNet2DConditionModel", "AutoencoderKL"):
        import diffusers

        return getattr(diffusers, name)
    if name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        import transformers

        return getattr(transformers, name)
    raise ModelDirError(f"{directory / 'config.json'}: describes a {name!r}, which pocketdiff cannot load here "
                        "(expected FlexUNet, UNet2DConditionModel, AutoencoderKL, SlimAutoencoderKL, CLIPTextModel "
                        "or CLIPImageTower)")


def _keys_summary(kind: str, keys) -> str:
    keys = sorted(str(k) for k in keys)
    return f"{len(keys)} {kind} key{'s' if len(keys) != 1 else ''}, e.g. {', '.join(keys[:3])}"


def check_component_dir(directory: str | Path, label: str | None = None, expect: str | tuple[str, ...] | None = None
                        ) -> dict:
    """The checks every saved component passes before `from_pretrained` sees it: the directory exists, its
    config.json is a JSON object (naming one of `expect`, when given), and it holds complete safetensors weights
    (never pickle). Returns the config."""
    directory = Path(directory)
    label = label or f"{directory.name}/"
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: no such directory (the model's {label} component)")
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise ModelDirError(f"{directory}: no config.json, not a saved model component")
    cfg = read_json(cfg_file, error=ModelDirError)
    if not isinstance(cfg, dict):
        raise ModelDirError(f"{cfg_file}: expected a JSON object")
    if expect is not None:
        names = (expect,) if isinstance(expect, str) else expect
        name = cfg.get("_class_name") or (cfg.get("architectures") or [None])[0]
        if name not in names:
            raise ModelDirError(f"{directory} holds a {name or 'config without _class_name'}, not a "
                                f"{' or '.join(names)}")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        raise WeightsError(f"{directory}: no .safetensors weights" + (
            f" (only {pickled}: pickle files are never loaded; convert them with safetensors)" if pickled else ""))
    for w in weights:
        check_safetensors(w)
    return cfg


def load_component(root: str | Path, subfolder: str | None = None, expect: str | tuple[str, ...] | None = None,
                   classes: tuple = ()):
    """The component in `root/subfolder` (or `root` itself), through `Class.from_pretrained(root, subfolder=...)`,
    loaded strictly (see the module docstring). `expect`: accepted `_class_name`s (e.g. "FlexUNet"); `classes`: the
    project's model classes it may hold (FlexUNet, SlimAutoencoderKL, CLIPImageTower), diffusers' and transformers'
    (UNet2DConditionModel, AutoencoderKL, CLIPTextModel) are known."""
    from .io import recover_dir

    root = Path(root)
    directory = root / subfolder if subfolder else root
    label = f"{subfolder}/" if subfolder else f"{directory.name}/"
    recover_dir(directory)
    cfg = check_component_dir(directory, label, expect)
    cls = _component_class(cfg, directory, classes)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    path = root if subfolder else directory
    try:
        model, info = cls.from_pretrained(str(path), output_loading_info=True, use_safetensors=True, **kwargs)
    except WeightsError as e:  # FlexUNet's own check
        if "shape" not in str(e):
            raise
        raise WeightsError(f"{label} weights do not match {label}config.json ({' '.join(str(e).split())[:300]}): was "
                           "the config replaced by another model's?") from None
    except PocketDiffError:
        raise
    except Exception as e:  # noqa: BLE001 - diffusers / transformers raise many types for a bad directory
        msg = " ".join(str(e).split())
        if "shape" in msg or "size mismatch" in msg:
            raise WeightsError(f"{label} weights do not match {label}config.json ({msg[:300]}): was the config "
                               "replaced by another model's?") from None
        raise WeightsError(f"{directory}: cannot be loaded ({msg[:300]})") from None
    problems = []
    if info.get("missing_keys"):
        problems.append(_keys_summary("missing", info["missing_keys"]))
    if info.get("unexpected_keys"):
        problems.append(_keys_summary("unexpected", info["unexpected_keys"]))
    if info.get("mismatched_keys"):
        problems.append(_keys_summary("mismatched-shape", [m[0] if isinstance(m, tuple) else m
                                                           for m in info["mismatched_keys"]]))
    if problems:
        raise WeightsError(f"{label} weights do not match {label}config.json: {'; '.join(problems)} (was the config "
                           "replaced by another model's, or the weights saved from another architecture?)")
    return model.eval()


def load_component_dir(path: str | Path, component: str, expect: str | tuple[str, ...] | None = None,
                       classes: tuple = ()):
    """`path` is a component directory, or a model directory holding `component/`: load that component."""
    path = Path(path)
    if (path / component / "config.json").is_file():
        return load_component(path, component, expect, classes)
    return load_component(path.parent, path.name, expect, classes)


def load_tokenizer_dir(root: str | Path, subfolder: str | None = "tokenizer", cls=None):
    """A tokenizer directory through `cls.from_pretrained(root, subfolder=...)` (default AutoTokenizer); a broken
    tokenizer.json or tokenizer_config.json names the file."""
    if cls is None:
        from transformers import AutoTokenizer as cls

    root = Path(root)
    directory = root / subfolder if subfolder else root
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: no such directory (the model's tokenizer)")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (directory / name).is_file():
            read_json(directory / name, error=ModelDirError)
    if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").is_file():
        raise ModelDirError(f"{directory}: no tokenizer.json (run `pocketdiff train tokenizer`)")
    try:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return cls.from_pretrained(str(root if subfolder else directory), **kwargs)
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions for a malformed file
        raise ModelDirError(f"{directory}: the tokenizer cannot be read ({' '.join(str(e).split())[:300]})") from None


def read_scheduler_config(root: str | Path) -> dict:
    """`root/scheduler/scheduler_config.json` (or the one *.json there) as a dict."""
    directory = Path(root) / "scheduler"
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise ModelDirError(f"{directory}: no scheduler config (scheduler_config.json)")
    cfg = read_json(files[0], error=ModelDirError)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("num_train_timesteps", 1000), int):
        raise ModelDirError(f"{files[0]}: not a scheduler config")
    return cfg


__all__ = ["FileReadError", "check_safetensors", "load_component", "load_component_dir", "load_safetensors", "load_tokenizer_dir",
           "parse_yaml_value", "read_json", "read_lines", "read_scheduler_config", "read_text", "read_yaml"]
