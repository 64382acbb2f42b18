"""Wall-clock latency of a UNet, block by block, on this machine's CPU (torch eager or onnxruntime).

torch backend: every unit (block, stem, sampler, head; see flops.py) is timed *in place*, by forward pre/post hooks
while the whole UNet runs, so each block sees its real inputs and the caches are as warm as in a real step. The whole
UNet is also timed without hooks. onnxruntime backend: the whole UNet and one graph per distinct block signature (with
the input shapes captured from a torch run) are exported by `torch.onnx.export(dynamo=True, opset_version=18)` and
timed as separate sessions; exporting costs seconds per block (SD-1.5 at 512px on 2 cores: 83 s of export, ~5 GB of
temporary files, 12.5 GB RAM), and the stem/samplers/head are not exported: their time is the residual (whole - sum of
blocks, clamped at 0; standalone block graphs can sum to more than the whole graph, see lut.py).

Every timed task (whole UNet, hooked UNet, each onnxruntime graph, the text encoder and VAE decoder when asked) runs
round-robin, `warmup` rounds discarded, `runs` kept, so that all rows share the machine's noise (measured.md: another
process moves every figure by 1.5-3x). Threads: `torch.set_num_threads(threads)` and onnxruntime's intra-op
threads; set OMP_WAIT_POLICY=PASSIVE before torch is imported (the CLI does) or a shared machine slows 3-8x.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..arch.spec import ArchSpec
from ..errors import PocketDiffError
from .flops import ArchCost, UnitCost, analyze, dummy_inputs, latent_size, stages, unit_modules

BACKENDS = ("torch", "onnxruntime")


def synced_clock(device: torch.device) -> float:
    """perf_counter once the device's queued work is done: CUDA kernels run asynchronously, so a timer read without
    synchronizing measures the launch, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def machine_info() -> dict:
    """CPU model and core count, and the GPU where one is visible (what a latency number needs beside it)."""
    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in have]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "isa": flags, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def default_threads() -> int:
    return machine_info()["cores"] or 1


@dataclass
class Timing:
    times_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min(self) -> float:
        return min(self.times_ms)

    @property
    def max(self) -> float:
        return max(self.times_ms)

    def to_dict(self) -> dict:
        return {"ms_median": self.median, "ms_min": self.min, "ms_max": self.max, "n": len(self.times_ms)}


@dataclass
class UnitProfile:
    cost: UnitCost
    timing: Timing | None  # None: not timed on its own (stem/samplers/head under onnxruntime)


@dataclass
class ComponentProfile:
    name: str
    params: int
    flops: int
    timing: Timing
    backend: str


@dataclass
class ModelProfile:
    name: str
    spec: ArchSpec
    backend: str
    resolution: int
    latent: int
    threads: int
    runs: int
    warmup: int
    cost: ArchCost
    units: list[UnitProfile]
    unet: Timing  # the whole UNet, no hooks
    overhead: Timing  # stem + samplers + head
    overhead_method: str  # "hooks" (measured in place) or "residual" (whole - blocks)
    unet_hooked: Timing | None = None  # the whole UNet with the hooks on (torch backend)
    components: dict[str, ComponentProfile] = field(default_factory=dict)
    export_s: float | None = None

    @property
    def overhead_params(self) -> int:
        return sum(u.cost.params for u in self.units if not u.cost.unit.is_block)

    @property
    def overhead_macs(self) -> int:
        return sum(u.cost.macs for u in self.units if not u.cost.unit.is_block)

    def stage_summary(self) -> list[dict]:
        """Per stage and block kind: ms (median) and params; the data of the talk's "few params, most latency"."""
        rows = []
        for st in stages(self.spec):
            us = [u for u in self.units if u.cost.unit.stage == st]
            if not us:
                continue
            row: dict[str, Any] = {"stage": st, "ms": {}, "params": {}, "flops": {}}
            for u in us:
                k = u.cost.unit.kind
                row["params"][k] = row["params"].get(k, 0) + u.cost.params
                row["flops"][k] = row["flops"].get(k, 0) + u.cost.flops
                if u.timing is not None:
                    row["ms"][k] = row["ms"].get(k, 0.0) + u.timing.median
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        blocks = []
        for u in self.units:
            unit = u.cost.unit
            d = dict(name=unit.name, stage=unit.stage, kind=unit.kind, label=unit.label, level=unit.level,
                     resolution=unit.resolution, in_channels=unit.in_channels, channels=unit.channels,
                     key=list(unit.key) if unit.key else None, signature=unit.signature, params=u.cost.params,
                     macs=u.cost.macs, flops=u.cost.flops)
            d.update(u.timing.to_dict() if u.timing else {"ms_median": None, "ms_min": None, "ms_max": None})
            blocks.append(d)
        counts = self.spec.counts()
        return {
            "name": self.name, "backend": self.backend, "resolution": self.resolution, "latent": self.latent,
            "threads": self.threads, "runs": self.runs, "warmup": self.warmup, "params": self.cost.params,
            "params_m": self.cost.params / 1e6, "macs": self.cost.macs, "flops": self.cost.flops,
            "gflops": self.cost.gflops, **counts, "spec": self.spec.to_dict(),
            "unet": self.unet.to_dict(), "unet_hooked": self.unet_hooked.to_dict() if self.unet_hooked else None,
            "overhead": {**self.overhead.to_dict(), "method": self.overhead_method, "params": self.overhead_params,
                         "macs": self.overhead_macs},
            "sum_block_ms": sum(u.timing.median for u in self.units if u.timing and u.cost.unit.is_block),
            "blocks": blocks, "stages": self.stage_summary(),
            "components": {n: {"params": c.params, "flops": c.flops, "gflops": c.flops / 1e9, "backend": c.backend,
                               **c.timing.to_dict()} for n, c in self.components.items()},
            "export_s": self.export_s,
        }


class Progress:
    """Progress callbacks (no-op here; the CLI shows a rich progress bar)."""

    def start(self, total: int, description: str) -> None:
        """A new phase of `total` steps."""

    def step(self, description: str) -> None:
        """A step begins."""

    def done(self) -> None:
        """The step that began has finished."""


def round_robin(tasks: dict[str, Callable[[], Any]], runs: int, warmup: int,
                progress: Progress | None = None) -> dict[str, list[float]]:
    """Run every task once per round (A, B, C, A, B, C, ...); return ms per kept round (warm-up rounds dropped)."""
    if runs < 1 or warmup < 0:
        raise PocketDiffError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    out: dict[str, list[float]] = {k: [] for k in tasks}
    for r in range(warmup + runs):
        for name, fn in tasks.items():
            if progress:
                progress.step(f"{'warm-up' if r < warmup else f'run {r - warmup + 1}/{runs}'}: {name}")
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1e3
            if progress:
                progress.done()
            if r >= warmup:
                out[name].append(dt)
    return out


class UnitTimer:
    """Times the units of a FlexUNet in place: pre/post forward hooks, installed only while `run` runs."""

    def __init__(self, model: nn.Module, unit_costs: list[UnitCost]):
        self.modules = [(uc.unit.name, m) for uc in unit_costs for m in unit_modules(model, uc.unit)]
        self.block_names = {uc.unit.name for uc in unit_costs if uc.unit.is_block}
        self.times: dict[str, list[float]] = {uc.unit.name: [] for uc in unit_costs}
        self.captured: dict[str, tuple] = {}

    def run(self, fn: Callable[[], Any], capture: bool = False) -> Any:
        acc: dict[str, float] = defaultdict(float)
        starts: dict[int, float] = {}
        handles = []
        for name, mod in self.modules:
            def pre(m, args, name=name):
                if capture and name in self.block_names and name not in self.captured:
                    self.captured[name] = args
                starts[id(m)] = time.perf_counter()

            def post(m, args, out, name=name):
                acc[name] += time.perf_counter() - starts[id(m)]

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        try:
            return fn()
        finally:
            for h in handles:
                h.remove()
            for name in self.times:
                self.times[name].append(acc.get(name, 0.0) * 1e3)


# ---------------------------------------------------------------------------- onnxruntime

class _BlockCall(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.block(x, cond)


class _UNetCall(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, context, return_dict=False)[0]


@contextlib.contextmanager
def _quiet_export():
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def onnx_session(module: nn.Module, args: tuple, names: list[str], path: Path, threads: int):
    """Export `module(*args)` (dynamo exporter, opset 18, external weights) and open a CPU session on it.
    Returns (run: () -> outputs, export seconds)."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - an optional extra
        raise PocketDiffError("--backend onnxruntime needs the export extra: pip install -e '.[export]'") from e
    t0 = time.perf_counter()
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=names, dynamo=True, opset_version=18,
                          external_data=True, verbose=False)
    export_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    present = {i.name for i in sess.get_inputs()}  # the exporter drops inputs the graph does not use
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(names, args) if n in present}
    return (lambda: sess.run(None, feeds)), export_s


# ---------------------------------------------------------------------------- the profiler

def profile_model(spec: ArchSpec, resolution: int = 512, backend: str = "torch", runs: int = 5, warmup: int = 1,
                  threads: int | None = None, components: bool = True, name: str | None = None,
                  progress: Progress | None = None, seed: int = 0, workdir: str | Path | None = None) -> ModelProfile:
    """Time `spec` (random weights, batch 1, 77-token context) per unit and as a whole; see the module docstring.
    `workdir`: where onnxruntime's temporary graphs go (default: the system's temporary directory)."""
    from ..arch.unet import FlexUNet

    if backend not in BACKENDS:
        raise PocketDiffError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    threads = threads or default_threads()
    if threads < 1:
        raise PocketDiffError(f"--threads must be >= 1 (got {threads})")
    torch.set_num_threads(threads)
    latent = latent_size(spec, resolution)
    cost = analyze(spec, resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FlexUNet.from_spec(spec).eval()
    inputs = dummy_inputs(spec, latent, seed=seed)

    comp_tasks: dict[str, Callable[[], Any]] = {}
    if components:
        from . import components as C

        te, dec = C.build_text_encoder(seed), C.build_vae_decoder(seed)
        ids, z = C.text_inputs(seed=seed), C.decoder_inputs(latent, seed=seed)
        comp_tasks = {"text_encoder": lambda: te(*ids), "vae_decoder": lambda: dec(*z)}

    prof = ModelProfile(name=name or spec.name, spec=spec, backend=backend, resolution=cost.resolution, latent=latent,
                        threads=threads, runs=runs, warmup=warmup, cost=cost, units=[], unet=Timing([0.0]),
                        overhead=Timing([0.0]), overhead_method="")
    run = _time_torch if backend == "torch" else _time_onnxruntime
    with torch.inference_mode():
        times = run(prof, model, inputs, comp_tasks, progress or Progress(), workdir)
    if components:
        info = {**C.component_costs(latent), "unet": {"params": cost.params, "flops": cost.flops}}
        for n in ("text_encoder", "unet", "vae_decoder"):  # the pipeline's order, as the talk's table
            timing, b = (prof.unet, backend) if n == "unet" else (Timing(times[n]), "torch")
            prof.components[n] = ComponentProfile(n, info[n]["params"], info[n]["flops"], timing, b)
    return prof


def _time_torch(prof: ModelProfile, model, inputs, comp_tasks, progress: Progress, workdir) -> dict[str, list[float]]:
    """Whole UNet without hooks, whole UNet with a hook pair on every unit, components: round-robin."""
    timer = UnitTimer(model, prof.cost.units)
    tasks = {"unet": lambda: model(*inputs), "unet_hooked": lambda: timer.run(lambda: model(*inputs)), **comp_tasks}
    progress.start((prof.warmup + prof.runs) * len(tasks), f"{prof.name}: timing")
    times = round_robin(tasks, prof.runs, prof.warmup, progress)
    unit_times = {n: Timing(t[prof.warmup:]) for n, t in timer.times.items()}
    prof.units = [UnitProfile(uc, unit_times[uc.unit.name]) for uc in prof.cost.units]
    prof.overhead = Timing([sum(u.timing.times_ms[r] for u in prof.units if not u.cost.unit.is_block)
                            for r in range(prof.runs)])
    prof.overhead_method, prof.unet, prof.unet_hooked = "hooks", Timing(times["unet"]), Timing(times["unet_hooked"])
    return times


def _time_onnxruntime(prof: ModelProfile, model, inputs, comp_tasks, progress: Progress,
                      workdir) -> dict[str, list[float]]:
    """Capture every block's inputs in one torch run, export the whole UNet and one graph per block signature, time
    the sessions (and the torch components) round-robin. Overhead = whole - sum of blocks, per round."""
    timer = UnitTimer(model, prof.cost.units)
    timer.run(lambda: model(*inputs), capture=True)
    by_sig: dict[str, UnitCost] = {}
    for uc in prof.cost.units:
        if uc.unit.is_block:
            by_sig.setdefault(uc.unit.signature, uc)
    progress.start(1 + len(by_sig) + (prof.warmup + prof.runs) * (1 + len(by_sig) + len(comp_tasks)),
                   f"{prof.name}: ONNX")
    with tempfile.TemporaryDirectory(prefix="pocketdiff-onnx-", dir=workdir) as tmp:
        progress.step("export: whole UNet")
        run, prof.export_s = onnx_session(_UNetCall(model), inputs, ["sample", "timestep", "context"],
                                          Path(tmp) / "unet.onnx", prof.threads)
        progress.done()
        tasks, sig_task = {"unet": run}, {}
        for j, (sig, uc) in enumerate(by_sig.items()):
            progress.step(f"export: {uc.unit.name} ({uc.unit.label})")
            run, s = onnx_session(_BlockCall(model.block(uc.unit.key)), timer.captured[uc.unit.name], ["x", "cond"],
                                  Path(tmp) / f"block{j}.onnx", prof.threads)
            progress.done()
            sig_task[sig] = f"block{j}:{uc.unit.name}"
            tasks[sig_task[sig]], prof.export_s = run, prof.export_s + s
        times = round_robin({**tasks, **comp_tasks}, prof.runs, prof.warmup, progress)
        del tasks, run  # close the sessions before their files go
    sig_timing = {sig: Timing(times[t]) for sig, t in sig_task.items()}
    prof.units = [UnitProfile(uc, sig_timing[uc.unit.signature] if uc.unit.is_block else None)
                  for uc in prof.cost.units]
    blocks = [sum(u.timing.times_ms[r] for u in prof.units if u.cost.unit.is_block) for r in range(prof.runs)]
    prof.unet = Timing(times["unet"])
    prof.overhead = Timing([max(0.0, w - b) for w, b in zip(times["unet"], blocks)])
    prof.overhead_method = "residual"
    return times


__all__ = ["BACKENDS", "Timing", "UnitProfile", "ComponentProfile", "ModelProfile", "Progress", "UnitTimer",
           "machine_info", "default_threads", "profile_model", "round_robin", "onnx_session"]
