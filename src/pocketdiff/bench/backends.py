"""How a component runs: the pluggable dimension of `pocketdiff bench` (and the place the exported runtimes plug in).

A backend turns a torch module, example inputs and a dtype into a callable that runs one forward. Built in:

- `eager`: the module in `dtype`, `torch.inference_mode()`;
- `eager-cl`: the same with channels_last weights and 4-D inputs (oneDNN's preferred conv layout on CPUs);
- `compile`: `torch.compile(module)` (inductor), compiled during preparation, so compile time is not in the timings
  (it is recorded as `prepare_s`).

Others register themselves: `register_backend("onnxruntime", prepare_fn, available=lambda: ...)`, where
`prepare_fn(module, example_args, dtype) -> callable(*args)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import PocketDiffError


class BackendError(PocketDiffError, ValueError):
    """An unknown or unavailable backend."""


@dataclass
class Backend:
    name: str
    prepare: Callable[[nn.Module, tuple, torch.dtype], Callable[..., Any]]
    available: Callable[[], bool] = lambda: True
    note: str = ""


_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, prepare: Callable, available: Callable[[], bool] = lambda: True,
                     note: str = "") -> Backend:
    _BACKENDS[name] = b = Backend(name, prepare, available, note)
    return b


def list_backends() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}")
    b = _BACKENDS[name]
    if not b.available():
        raise BackendError(f"backend {name!r} is not available here ({b.note or 'missing dependency'})")
    return b


def cast_inputs(args: tuple, dtype: torch.dtype, channels_last: bool = False) -> tuple:
    """Floating tensors to `dtype` (ids and timesteps untouched); 4-D ones channels_last if asked."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            a = a.to(dtype)
            if channels_last and a.dim() == 4:
                a = a.contiguous(memory_format=torch.channels_last)
        out.append(a)
    return tuple(out)


def _runner(module: nn.Module) -> Callable[..., Any]:
    def run(*args):
        with torch.inference_mode():
            return module(*args)
    return run


def _eager(module: nn.Module, example: tuple, dtype: torch.dtype) -> Callable[..., Any]:
    return _runner(module.eval().to(dtype))


def _eager_cl(module: nn.Module, example: tuple, dtype: torch.dtype) -> Callable[..., Any]:
    return _runner(module.eval().to(dtype).to(memory_format=torch.channels_last))


def _compile(module: nn.Module, example: tuple, dtype: torch.dtype) -> Callable[..., Any]:
    compiled = torch.compile(module.eval().to(dtype))
    run = _runner(compiled)
    run(*example)  # compile now, not inside the first timed round
    return run


register_backend("eager", _eager, note="torch eager")
register_backend("eager-cl", _eager_cl, note="torch eager, channels_last")
register_backend("compile", _compile, note="torch.compile (inductor); compile time excluded, recorded")


def prepare(name: str, module: nn.Module, example: tuple, dtype: torch.dtype) -> tuple[Callable[..., Any], float]:
    """(callable, seconds spent preparing) for `module` under backend `name`."""
    b = get_backend(name)
    t0 = time.perf_counter()
    fn = b.prepare(module, example, dtype)
    return fn, time.perf_counter() - t0


__all__ = ["Backend", "BackendError", "cast_inputs", "get_backend", "list_backends", "prepare", "register_backend"]
