"""How a component runs: the pluggable dimension of `pocketdiff bench` (and the place the exported runtimes plug in).

A backend turns a torch module, example inputs and a dtype into a callable that runs one forward. Built in:

- `eager`: the module in `dtype`, `torch.inference_mode()`;
- `eager-cl`: the same with channels_last weights and 4-D inputs (oneDNN's preferred conv layout on CPUs);
- `compile`: `torch.compile(module)` (inductor), compiled during preparation, so compile time is not in the timings
  (it is recorded as `prepare_s`);
- `onnxruntime`, `openvino`, `executorch`: the module exported fp32 with `pocketdiff.export`'s exporters into a
  temporary directory during preparation (export time is `prepare_s`) and run by the runtime: onnxruntime on the ONNX
  graph, OpenVINO compiling that same ONNX file (as `--backend auto` does), ExecuTorch a static-shape `.pte` with the
  XNNPACK delegate at the task's batch. fp32 only; available where the `export` extra is installed.

Others register the same way: `register_backend(name, prepare_fn, available=lambda: ...)`, where
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


class _Tensors(nn.Module):
    """A component whose forward returns an output object (a UNet's `.sample`), as a tensor-out module to export."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.m = module

    def forward(self, x, timestep=None, context=None):  # named: torch.export cannot take *args
        out = self.m(x) if timestep is None else self.m(x, timestep, context)
        if isinstance(out, torch.Tensor):
            return out
        return out.sample if hasattr(out, "sample") else out[0]


def _network(example: tuple) -> str:
    """Which of the exporter's networks (its input/output names) a bench component is, from its inputs."""
    if len(example) == 3:
        return "unet"
    return "decoder" if example[0].is_floating_point() else "text_encoder"


def _runtime(fmt: str):
    def prepare_fn(module: nn.Module, example: tuple, dtype: torch.dtype) -> Callable[..., Any]:
        import tempfile
        from pathlib import Path

        from ..export.common import require_runtime
        from ..export.runtimes import export_executorch, export_onnx, load_runner

        if dtype != torch.float32:
            raise BackendError(f"backend {_NAMES[fmt]!r} runs fp32 exports here; use --dtype fp32 with it")
        require_runtime(fmt)
        net, work = _Tensors(module.eval()), tempfile.TemporaryDirectory(prefix=f"bench_{fmt}_")
        root = Path(work.name)
        if fmt == "executorch":
            export_executorch(net, example, root / "net.pte")
            files = {str(example[0].shape[0]): "net.pte"}
        else:
            export_onnx(net, _network(example), example, root / "net.onnx")
            files = {"any": "net.onnx"}
        runner = load_runner(fmt, files, root)

        def run(*args):
            return runner(*[a.numpy() for a in args])

        run.work = work  # the exported files live as long as the callable
        return run
    return prepare_fn


def _available(fmt: str) -> Callable[[], bool]:
    def check() -> bool:
        from ..export.common import runtime_installed

        return runtime_installed(fmt)
    return check


_NAMES = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}

register_backend("eager", _eager, note="torch eager")
register_backend("eager-cl", _eager_cl, note="torch eager, channels_last")
register_backend("compile", _compile, note="torch.compile (inductor); compile time excluded, recorded")
for _fmt, _name in _NAMES.items():
    register_backend(_name, _runtime(_fmt), _available(_fmt),
                     note=f"{_name}, fp32 export (pip install 'pocketdiff[export]'); export time excluded, recorded")


def prepare(name: str, module: nn.Module, example: tuple, dtype: torch.dtype) -> tuple[Callable[..., Any], float]:
    """(callable, seconds spent preparing) for `module` under backend `name`."""
    b = get_backend(name)
    t0 = time.perf_counter()
    fn = b.prepare(module, example, dtype)
    return fn, time.perf_counter() - t0


__all__ = ["Backend", "BackendError", "cast_inputs", "get_backend", "list_backends", "prepare", "register_backend"]
