"""Training configs: dataclasses read from YAML, strictly checked, with named presets.

A stage config file looks like this (the shipped `vae` config, `pocketdiff/configs/shapes/vae.yaml`)::

    stage: vae                      # a key of pocketdiff.training.stages.STAGES
    export_dir: models/shapes/vae   # where the final (EMA) component is saved
    max_steps: 3000
    batch_size: 32
    lr: 1.0e-3
    ...                             # any field of TrainConfig
    options:                        # stage-specific, checked against the stage's `Options` dataclass
      block_out_channels: [32, 64, 128]
    presets:                        # named overrides, deep-merged over the file: --preset quick
      quick: {max_steps: 5, batch_size: 4, options: {block_out_channels: [8, 8, 8]}}

Unknown keys, wrong types and bad values raise `ConfigError` (a `SpecError`) naming the field, e.g.
`vae.yaml: options.kl_weigth: unknown key (known: ...)`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from pocketdiff.errors import ConfigError, UnknownPresetError


@dataclass
class TrainConfig:
    """Fields shared by every stage. Stage-specific settings live in `options` (the stage's `Options`)."""

    stage: str
    export_dir: str
    out_dir: str | None = None  # checkpoints + log.jsonl; default runs/<stage>
    seed: int = 0
    # budget: stop at whichever comes first; the LR schedule always spans max_steps
    max_steps: int = 1000
    max_minutes: float | None = None  # cumulative over resumes
    # optimisation (AdamW, warmup + cosine)
    batch_size: int = 32  # per process: the global batch is batch_size x processes x grad_accum_steps
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999  # None: no EMA, export the raw weights
    # auto: bf16 on a GPU that has it, fp32 on a CPU (`loop.resolve_mixed_precision`)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "no"
    num_threads: int | None = None  # torch.set_num_threads; None: all cores
    num_workers: int = 0  # DataLoader worker processes per training process (0: load in the training process)
    # bookkeeping (0 disables)
    log_every: int = 10
    sample_every: int = 0
    eval_every: int = 0
    checkpoint_every: int = 500
    options: Any = field(default_factory=dict)  # replaced by the stage's Options instance

    def __post_init__(self) -> None:
        checks = {
            "max_steps": self.max_steps >= 0,
            "batch_size": self.batch_size >= 1,
            "grad_accum_steps": self.grad_accum_steps >= 1,
            "lr": self.lr > 0,
            "min_lr": 0 <= self.min_lr <= self.lr,
            "warmup_steps": self.warmup_steps >= 0,
            "ema_decay": self.ema_decay is None or 0 <= self.ema_decay < 1,
            "max_minutes": self.max_minutes is None or self.max_minutes > 0,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
            "num_workers": self.num_workers >= 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
        }
        for name in ("log_every", "sample_every", "eval_every", "checkpoint_every"):
            checks[name] = getattr(self, name) >= 0
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name}: invalid value {getattr(self, name)!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.stage}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- parsing


def _check(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly coerce: int -> float, list -> tuple) `value` against the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not match {tp}")
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads a bare `no` (mixed_precision: no) as false
            value = "no"
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(tp, type) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys, missing required keys and bad types name the field."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check(data[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(items: list[str] | None) -> dict:
    """`["options.tokenizer_dir=/tmp/tok", "max_steps=3"]` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. max_steps=10)")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        from pocketdiff.loading import parse_yaml_value

        node[leaf] = parse_yaml_value(raw, f"--set {key}", ConfigError)
    return out


def read_config_dict(path: str | Path, preset: str | None = None, overrides: dict | None = None) -> dict:
    """The YAML file as a dict, with `presets[preset]` and then `overrides` deep-merged in. `path` is a shipped
    config's name (`student`) or a path (`pocketdiff.resources.config_path`)."""
    from pocketdiff.loading import read_yaml
    from pocketdiff.resources import config_path

    path = config_path(path)

    raw = read_yaml(path, error=ConfigError) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    presets = raw.pop("presets", None) or {}
    if preset is not None:
        if preset not in presets:
            raise UnknownPresetError(f"{path}: unknown preset {preset!r} (known: {', '.join(presets) or 'none'})")
        raw = deep_merge(raw, presets[preset])
    return deep_merge(raw, overrides or {})



def config_from_dict(data: dict, options_cls: type) -> TrainConfig:
    """Validate a config given as a dict (tests, checkpoints)."""
    cfg = from_dict(TrainConfig, data)
    cfg.options = from_dict(options_cls, cfg.options or {}, "options")
    return cfg
