"""Inference precision: which dtype a CPU runs fast. bf16 halves a UNet step on CPUs with native bf16 (avx512_bf16
or AMX: the matmuls run in bf16 hardware); elsewhere PyTorch emulates it and it is slower than fp32 (measured on a
Zen 3: 13.5 s a step in bf16 against 1.0 s in fp32, docs/benchmarks.md). So `auto` = bf16 only where it is native.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import PocketDiffError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class DTypeError(PocketDiffError, ValueError):
    """An unknown --dtype."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (or the given text); empty where unreadable (not Linux)."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None, capability: str | None = None) -> bool:
    """True where the CPU computes bf16 natively: an avx512_bf16 / amx_bf16 flag, or PyTorch's CPU capability
    reporting AMX (torch.backends.cpu.get_cpu_capability(); it reports "AVX512" on avx512_bf16 CPUs, so the flags
    are read too)."""
    flags = cpu_flags() if flags is None else flags
    if capability is None:
        with contextlib.suppress(Exception):
            capability = torch.backends.cpu.get_cpu_capability()
    return bool(flags & set(NATIVE_BF16_FLAGS)) or "AMX" in str(capability or "").upper()


def resolve_dtype(name: str, device: str | torch.device = "cpu", native: bool | None = None,
                  model_default: str = "bf16") -> str:
    """'auto' -> 'bf16' on a CPU with native bf16 (or a CUDA device with bf16), else 'fp32'; 'fp32'/'bf16' as
    given. `model_default` "fp32" keeps a model whose bf16 quality was not shown to hold at fp32 even there.
    `native` overrides the CPU detection (tests)."""
    if name not in DTYPE_CHOICES:
        raise DTypeError(f"--dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    if name != "auto":
        return name
    if model_default == "fp32":
        return "fp32"
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type != "cpu":
        return "fp32"
    return "bf16" if (native_bf16() if native is None else native) else "fp32"


def to_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise DTypeError(f"dtype {name!r}: choose one of {', '.join(DTYPES)} (resolve 'auto' first)")
    return DTYPES[name]


__all__ = ["DTYPES", "DTYPE_CHOICES", "DTypeError", "cpu_flags", "native_bf16", "resolve_dtype", "to_dtype"]
