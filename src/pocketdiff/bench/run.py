"""Time a pipeline's components interleaved in one process and compose the talk's latency table from them.

    per image = [ text encoder (1 prompt, 2 with CFG) + steps x UNet step (batch 1, 2 with CFG) + decoder ] / batch

Each distinct component (model, batch, resolution, dtype, backend) is one *task*; the tasks run round-robin
(`warmup` rounds discarded, `runs` kept) so that every row shares the machine's noise, and a UNet step is timed
once per round however many steps a configuration takes (SD-1.5's 50 steps = one step x 50). The per-image time is
composed from the components' medians; its spread from the per-round compositions (each round's components ran
back to back). A square matmul in each dtype is one more task: the machine's achievable rate in that run, next to
which each UNet's achieved GFLOP/s (FLOPs from `torch.utils.flop_counter` on the meta device) is read.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

import torch

from ..errors import SpecError
from ..precision import native_bf16, resolve_dtype, to_dtype
from ..profiling.flops import count_flops
from ..profiling.latency import machine_info
from . import components as C
from .backends import cast_inputs, get_backend, prepare
from .configs import BASELINE, BenchConfig, get_config

MATMUL_N = 2048  # square matmul of the rate task: 2 n^3 FLOPs


@dataclass(frozen=True)
class Task:
    component: str  # text_encoder | unet | decoder | matmul
    model: str  # clip-l | an arch preset | sd / pruned / tiny | matmul size
    batch: int
    latent: int  # 0 where it does not apply
    dtype: str
    backend: str

    @property
    def key(self) -> str:
        res = f":{self.latent * 8}px" if self.latent else ""
        return f"{self.component}:{self.model}:b{self.batch}{res}:{self.dtype}:{self.backend}"


@dataclass
class Plan:
    """One row of the table: a configuration at one resolution and batch, and its three tasks."""

    config: BenchConfig
    resolution: int
    batch: int
    text: Task
    unet: Task
    decoder: Task


def variants(names: list[str], dtypes: list[str] | None = None, backends: list[str] | None = None,
             native: bool | None = None) -> list[BenchConfig]:
    """The configurations to run: each name with every --dtype x --backend given (the baseline as it is), 'auto'
    resolved for this machine. Several variants of one name are named `name@dtype-backend`."""
    out = []
    for name in names:
        cfg = get_config(name)
        if name == BASELINE or (not dtypes and not backends):
            out.append(cfg.with_(dtype=resolve_dtype(cfg.dtype, native=native)))
            continue
        ds, bs = dtypes or [cfg.dtype], backends or [cfg.backend]
        for d in ds:
            for b in bs:
                dd = resolve_dtype(d, native=native)
                label = cfg.name if len(ds) * len(bs) == 1 else f"{cfg.name}@{d}-{b}"
                out.append(cfg.with_(name=label, dtype=dd, backend=b))
    seen = set()
    for c in out:
        if c.name in seen:
            raise SpecError(f"configuration {c.name!r} twice: list each name once")
        seen.add(c.name)
        get_backend(c.backend)  # unknown / unavailable backends fail before anything is built
    return out


def make_plans(configs: list[BenchConfig], resolutions: list[int], batches: list[int]) -> list[Plan]:
    plans = []
    for res in resolutions:
        if res <= 0 or res % 64:
            raise SpecError(f"--resolution {res}: must be a positive multiple of 64 (latent / 8 for 4 UNet levels)")
        latent = res // 8
        for b in batches:
            if b < 1:
                raise SpecError(f"--batch {b}: must be >= 1")
            for c in configs:
                k = 2 if c.cfg else 1
                plans.append(Plan(c, res, b,
                                  Task("text_encoder", c.text_encoder, b * k, 0, c.dtype, c.backend),
                                  Task("unet", c.unet, b * k, latent, c.dtype, c.backend),
                                  Task("decoder", c.decoder, b, latent, c.dtype, c.backend)))
    return plans


def unique_tasks(plans: list[Plan]) -> list[Task]:
    """The distinct tasks in first-use order, then one matmul-rate task per dtype."""
    out: dict[str, Task] = {}
    for p in plans:
        for t in (p.text, p.unet, p.decoder):
            out.setdefault(t.key, t)
    for d in sorted({t.dtype for t in out.values()}):
        t = Task("matmul", str(MATMUL_N), 1, 0, d, "eager")
        out.setdefault(t.key, t)
    return list(out.values())


# --------------------------------------------------------------------------------------------- building

def _build(task: Task, width: float):
    if task.component == "text_encoder":
        return C.build_text_encoder(task.model, width)
    if task.component == "unet":
        return C.build_unet(task.model, width)
    if task.component == "decoder":
        return C.build_decoder(task.model, width)
    raise SpecError(f"unknown component {task.component!r}")


def _inputs(task: Task, width: float) -> tuple:
    if task.component == "text_encoder":
        return C.text_inputs(task.batch, width)
    if task.component == "unet":
        return C.unet_inputs(task.batch, task.latent, width)
    if task.component == "decoder":
        return C.decoder_inputs(task.batch, task.latent)
    n = int(task.model)
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)


def task_cost(task: Task, width: float) -> tuple[int, int]:
    """(params, FLOPs) of one call of the task, counted on the meta device."""
    if task.component == "matmul":
        n = int(task.model)
        return 0, 2 * n ** 3
    with torch.device("meta"):
        m = _build(task, width)
        args = tuple(a.to("meta") for a in _inputs(task, width))
    return sum(p.numel() for p in m.parameters()), count_flops(m, *args)


# --------------------------------------------------------------------------------------------- timing

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_round_robin(fns: dict[str, Callable[[], object]], runs: int, warmup: int,
                     on_step: Callable[[int, str], None] | None = None, clock: str = "wall") -> dict[str, list[float]]:
    """ms of each callable, round-robin: `warmup` rounds discarded, `runs` kept. clock "cpu": this process's CPU
    time (all its threads), which other processes on a shared machine do not inflate; with one thread it is the
    time an idle core would take."""
    if clock not in CLOCKS:
        raise SpecError(f"--clock {clock!r}: choose wall or cpu")
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + runs):
        for k, fn in fns.items():
            if on_step:
                on_step(r, k)
            t0 = now()
            fn()
            ms = 1e3 * (now() - t0)
            if r >= warmup:
                times[k].append(ms)
    return times


def compose(plan: Plan, times: dict[str, list[float]]) -> dict:
    """One row: ms per component (medians), the per-image total composed from them, and the per-round totals."""
    steps, b = plan.config.steps, plan.batch
    te, un, de = (times[t.key] for t in (plan.text, plan.unet, plan.decoder))
    med = statistics.median
    per_round = [(a + steps * u + d) / b for a, u, d in zip(te, un, de)]
    total = (med(te) + steps * med(un) + med(de)) / b
    return dict(
        name=plan.config.name, resolution=plan.resolution, batch=b, steps=steps, cfg=plan.config.cfg,
        unet=plan.config.unet, decoder=plan.config.decoder, text_encoder=plan.config.text_encoder,
        dtype=plan.config.dtype, backend=plan.config.backend,
        text_ms=med(te), unet_step_ms=med(un), unet_ms=steps * med(un), decoder_ms=med(de),
        ms_per_image=total, ms_per_image_min=min(per_round), ms_per_image_max=max(per_round),
        round_ms_per_image=per_round,
        shares={"text_encoder": med(te) / b / total, "unet": steps * med(un) / b / total,
                "decoder": med(de) / b / total},
        tasks={"text_encoder": plan.text.key, "unet": plan.unet.key, "decoder": plan.decoder.key},
    )


def add_speedups(rows: list[dict], baseline: str = BASELINE) -> None:
    """speedup = the baseline's per-image ms / the row's, at the same resolution and batch, from the same run;
    `speedup_per_round` the median of the per-round ratios (robust when the load changes between rounds)."""
    base = {(r["resolution"], r["batch"]): r for r in rows if r["name"] == baseline}
    for r in rows:
        ref = base.get((r["resolution"], r["batch"]))
        if ref is None:
            r["speedup"] = r["speedup_per_round"] = None
            continue
        r["speedup"] = ref["ms_per_image"] / r["ms_per_image"]
        r["speedup_per_round"] = statistics.median(
            a / b for a, b in zip(ref["round_ms_per_image"], r["round_ms_per_image"]))


def add_rates(rows: list[dict], tasks: dict[str, dict]) -> None:
    """Achieved GFLOP/s of each row's UNet step, and the same run's matmul rate in its dtype."""
    for r in rows:
        t = tasks[r["tasks"]["unet"]]
        r["unet_gflops"] = t["flops"] / 1e9
        r["unet_gflop_s"] = t["flops"] / 1e9 / (t["ms_median"] / 1e3)
        mm = tasks.get(Task("matmul", str(MATMUL_N), 1, 0, r["dtype"], "eager").key)
        r["matmul_gflop_s"] = mm and mm["flops"] / 1e9 / (mm["ms_median"] / 1e3)
        r["unet_fraction_of_matmul"] = mm and r["unet_gflop_s"] / r["matmul_gflop_s"]


# --------------------------------------------------------------------------------------------- the run

def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "pocketdiff", "onnxruntime", "openvino", "executorch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_info() -> dict:
    la = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg": list(la)}


@dataclass
class Progress:
    """Hooks for a progress bar: `start(total)` once, `step(desc)` before each timed call."""

    start: Callable[[int], None] = lambda total: None
    step: Callable[[str], None] = lambda desc: None
    log: Callable[[str], None] = lambda msg: None


@dataclass
class BenchResult:
    rows: list[dict]
    tasks: dict[str, dict]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.meta, "rows": self.rows, "tasks": self.tasks}


def run_bench(names: list[str], *, resolutions=(512,), batches=(1,), runs: int = 3, warmup: int = 1,
              threads: int | None = None, dtypes: list[str] | None = None, backends: list[str] | None = None,
              width: float = 1.0, progress: Progress | None = None, native: bool | None = None,
              clock: str = "wall") -> BenchResult:
    """Build every distinct component once, time them interleaved, compose the rows. `width` < 1 scales every
    model down (tests); the figures then mean nothing about the full-size pipeline."""
    progress = progress or Progress()
    if clock not in CLOCKS:
        raise SpecError(f"--clock {clock!r}: choose wall or cpu")
    if runs < 1 or warmup < 0:
        raise SpecError(f"--runs {runs} / --warmup {warmup}: need runs >= 1 and warmup >= 0")
    if threads:
        torch.set_num_threads(threads)
    load_start = load_info()
    configs = variants(names, dtypes, backends, native=native)
    plans = make_plans(configs, list(resolutions), list(batches))
    tasks = unique_tasks(plans)

    fns, info, built = {}, {}, {}
    for t in tasks:
        progress.log(f"building {t.key}")
        params, flops = task_cost(t, width)
        dtype = to_dtype(t.dtype)
        args = _inputs(t, width)
        if t.component == "matmul":
            a, b = cast_inputs(args, dtype)
            fns[t.key], prep_s = (lambda a=a, b=b: torch.mm(a, b)), 0.0
        else:
            mkey = (t.component, t.model, t.dtype, t.backend)  # one module per model, dtype and backend
            if mkey not in built:
                built[mkey] = _build(t, width)
            args = cast_inputs(args, dtype, channels_last=t.backend == "eager-cl")
            fn, prep_s = prepare(t.backend, built[mkey], args, dtype)
            fns[t.key] = lambda fn=fn, args=args: fn(*args)
        info[t.key] = dict(component=t.component, model=t.model, batch=t.batch, resolution=t.latent * 8 or None,
                           dtype=t.dtype, backend=t.backend, params=params, flops=flops, prepare_s=prep_s)

    progress.start((warmup + runs) * len(fns))
    times = time_round_robin(fns, runs, warmup, clock=clock, on_step=lambda r, k: progress.step(
        f"round {r + 1}/{warmup + runs}{' (warm-up)' if r < warmup else ''}: {k}"))
    for k, ts in times.items():
        info[k].update(ms_median=statistics.median(ts), ms_min=min(ts), ms_max=max(ts), times_ms=ts)

    rows = [compose(p, times) for p in plans]
    add_speedups(rows)
    add_rates(rows, info)
    meta = dict(
        command="pocketdiff " + " ".join(sys.argv[1:]) if sys.argv and "pocketdiff" in sys.argv[0] else None,
        date=load_start["time"], machine=machine_info(), native_bf16=native_bf16() if native is None else native,
        cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), versions=versions(), runs=runs, warmup=warmup,
        resolutions=list(resolutions), batches=list(batches), width=width, baseline=BASELINE, clock=clock,
        configs=[c.to_dict() for c in configs], load_start=load_start, load_end=load_info(),
    )
    return BenchResult(rows, info, meta)


__all__ = ["BenchResult", "Plan", "Progress", "Task", "add_rates", "add_speedups", "compose", "make_plans",
           "run_bench", "time_round_robin", "unique_tasks", "variants"]
