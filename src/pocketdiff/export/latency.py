"""Latency per backend and dtype, measured interleaved: every (backend, dtype) of one model runs its text encoder,
one UNet step (the CFG batch of 2), decoder and (for the shipped models) one whole image in the same round-robin
(`profiling.latency.round_robin`), so that all rows share the machine's noise and their ratios hold."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..profiling.latency import round_robin
from .networks import DecoderNet, TextEncoderNet, UNetNet
from .runtimes import load_runner


def eager_tasks(nets: dict[str, torch.nn.Module], inputs: dict[str, tuple]) -> dict[str, Callable[[], object]]:
    def call(net, args):
        def fn():
            with torch.inference_mode():
                net(*args)
        return fn

    return {name: call(net, inputs[name]) for name, net in nets.items()}


def runtime_tasks(fmt: str, root: Path, files: dict[str, dict], inputs: dict[str, tuple],
                  threads: int) -> dict[str, Callable[[], object]]:
    tasks = {}
    for name, f in files.items():
        runner = load_runner(fmt, f, root, threads)
        arrays = [a.numpy() for a in inputs[name]]
        tasks[name] = (lambda r, a: (lambda: r(*a)))(runner, arrays)
    return tasks


def measure(rows: dict[str, dict[str, Callable[[], object]]], runs: int, warmup: int) -> dict[str, dict]:
    """rows: {row label: {part: task}} -> {row label: {part: {median_ms, times_ms}}}, all tasks interleaved."""
    flat = {(row, part): fn for row, parts in rows.items() for part, fn in parts.items()}
    times = round_robin({f"{r}|{p}": fn for (r, p), fn in flat.items()}, runs=runs, warmup=warmup)
    out: dict[str, dict] = {}
    for key, ts in times.items():
        row, part = key.split("|", 1)
        out.setdefault(row, {})[part] = {"median_ms": statistics.median(ts), "times_ms": ts}
    return out


__all__ = ["DecoderNet", "TextEncoderNet", "UNetNet", "eager_tasks", "measure", "runtime_tasks", "np"]
