"""`pocketdiff profile NAME...`: per-block and whole-UNet latency on this CPU, the pipeline's components, the
latency lookup table for architecture evolving, and the "attention: few params, most latency" plot.

    pocketdiff profile sd15 snapfusion [--resolution 512] [--backend torch|onnxruntime] [--runs 5] [--warmup 1]
        [--threads T] [--json PATH] [--plot PNG] [--lut PATH] [--components/--no-components] [--width W]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective only if torch is not imported yet (the CLI sets it)

import datetime as dt
from pathlib import Path

import typer

HELP = "\n\n".join(" ".join(par.split()) for par in """
Time every block of each UNet in place (forward hooks while the whole UNet runs), the whole UNet without hooks, and
the text encoder / UNet / VAE decoder of the pipeline (SD-1.5's CLIP ViT-L/14 text tower and VAE decoder, random
weights). Batch 1, 77x768 text context, latent = resolution / 8, median/min/max over --runs after --warmup, everything
round-robin so that all rows share the machine's noise.

--backend onnxruntime exports the whole UNet and one graph per distinct block (torch.onnx dynamo exporter, opset 18)
and times them in onnxruntime (CPU, intra-op threads = --threads); the components stay in torch. Exporting is slow:
~2-5 s per block even for tiny models; SD-1.5 at 512px took 83 s of export, 4 min in all, 12.5 GB RAM and ~5 GB of
temporary files on 2 cores. Use a small --width/--resolution for quick looks.

Set OMP_WAIT_POLICY=PASSIVE on a shared machine (the CLI does, if unset).
""".strip().split("\n\n"))


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..profiling.latency import Progress as Hooks

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)

    class RichHooks(Hooks):
        task = None

        def start(self, total: int, description: str) -> None:
            if self.task is not None:
                bar.remove_task(self.task)
            self.task = bar.add_task(description, total=total)
            self.model = description.split(":")[0]

        def step(self, description: str) -> None:
            bar.update(self.task, description=f"{self.model}: {description}")

        def done(self) -> None:
            bar.advance(self.task)

    return bar, RichHooks()


def _f(ms: float | None) -> str:
    return "-" if ms is None else (f"{ms:,.1f}" if ms >= 10 else f"{ms:.2f}")


def _print_profile(con, p) -> None:
    from rich.table import Table

    unet = p.unet.median
    t = Table(title=f"{p.name}: {p.backend}, {p.resolution}px (latent {p.latent}), {p.threads} threads, "
                    f"{p.runs} runs after {p.warmup} warm-up", title_justify="left")
    for col in ("unit", "block", "in>ch", "res", "params (M)", "GFLOPs", "ms median", "min", "max", "% UNet"):
        t.add_column(col, justify="left" if col in ("unit", "block") else "right")
    for u in p.units:
        un, tm = u.cost.unit, u.timing
        t.add_row(un.name, un.label, f"{un.in_channels}>{un.channels}", str(un.resolution),
                  f"{u.cost.params / 1e6:,.2f}", f"{u.cost.flops / 1e9:,.2f}", _f(tm and tm.median),
                  _f(tm and tm.min), _f(tm and tm.max), "-" if tm is None else f"{100 * tm.median / unet:.1f}")
    con.print(t)
    blocks = sum(u.timing.median for u in p.units if u.timing and u.cost.unit.is_block)
    line = (f"whole UNet (no hooks): median {_f(unet)} ms (min {_f(p.unet.min)}, max {_f(p.unet.max)}); "
            f"sum of block medians {_f(blocks)} ms; overhead (stem, samplers, head; {p.overhead_method}) "
            f"{_f(p.overhead.median)} ms")
    if p.unet_hooked:
        line += f"; with hooks {_f(p.unet_hooked.median)} ms"
    if p.export_s is not None:
        line += f"; ONNX export {p.export_s:.1f} s"
    con.print(line)
    con.print(f"params {p.cost.params / 1e6:,.1f}M, {p.cost.gflops:,.1f} GFLOPs "
              f"({p.cost.gflops * 1e3 / max(unet, 1e-9):,.1f} GFLOP/s achieved)")
    if p.components:
        c = Table(title=f"{p.name}: pipeline components (one UNet step)", title_justify="left")
        for col in ("component", "backend", "params (M)", "GFLOPs", "ms median", "min", "max", "UNet steps"):
            c.add_column(col, justify="left" if col in ("component", "backend") else "right")
        for comp in p.components.values():
            c.add_row(comp.name, comp.backend, f"{comp.params / 1e6:,.1f}", f"{comp.flops / 1e9:,.1f}",
                      _f(comp.timing.median), _f(comp.timing.min), _f(comp.timing.max),
                      f"{comp.timing.median / unet:.2f}")
        con.print(c)


def profile(
    names: list[str] = typer.Argument(..., help="presets, spec files (JSON/YAML) or saved FlexUNet directories"),
    resolution: int = typer.Option(512, help="image pixels (latent = resolution / 8)"),
    backend: str = typer.Option("torch", help="torch | onnxruntime (slow to export at full size; see above)"),
    runs: int = typer.Option(5, help="timed rounds (median/min/max over them)"),
    warmup: int = typer.Option(1, help="discarded rounds first"),
    threads: int | None = typer.Option(None, help="torch / onnxruntime threads (default: all cores)"),
    json_path: Path | None = typer.Option(None, "--json", help="per model: blocks, whole UNet, components, FLOPs"),
    plot: Path | None = typer.Option(None, help="PNG: latency vs params per stage and kind, and per unit"),
    lut: Path | None = typer.Option(None, help="write the latency lookup table (JSON) keyed by block signature"),
    components: bool = typer.Option(True, help="also time SD-1.5's text encoder and VAE decoder"),
    width: float = typer.Option(1.0, help="scale the channels of presets (small models for quick looks)"),
) -> None:
    import torch

    from ..io import write_json_atomic
    from ..profiling.latency import default_threads, machine_info, profile_model
    from ..profiling.lut import build_lut
    from .arch import _console, resolve_spec

    from ..validation import OptionError, check_int, check_output_file
    from .arch import check_resolution

    check_resolution(resolution)
    check_int("--runs", runs, 1)
    check_int("--warmup", warmup, 0)
    check_int("--threads", threads, 1)
    if backend not in ("torch", "onnxruntime"):
        raise OptionError(f"--backend {backend!r}: choose torch or onnxruntime")
    check_output_file("--json", json_path, (".json",))
    check_output_file("--lut", lut, (".json",))
    check_output_file("--plot", plot, (".png",))
    specs = [resolve_spec(n, width) for n in names]  # fail on a bad name before any timing
    threads = threads or default_threads()
    con = _console()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        con.print("[yellow]note: OMP_WAIT_POLICY is not PASSIVE; on a shared machine timings may be 3-8x slower")
    profiles = []
    bar, hooks = _progress_bar()
    with bar:
        for spec in specs:
            profiles.append(profile_model(spec, resolution=resolution, backend=backend, runs=runs, warmup=warmup,
                                          threads=threads, components=components, progress=hooks))
    for p in profiles:
        _print_profile(con, p)

    machine, date = machine_info(), dt.datetime.now().isoformat(timespec="seconds")
    if json_path:
        write_json_atomic(json_path, {
            "backend": backend, "resolution": resolution, "threads": threads, "runs": runs, "warmup": warmup,
            "machine": machine, "date": date, "torch_version": torch.__version__,
            "loadavg": list(os.getloadavg()), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "models": {p.name: p.to_dict() for p in profiles},
        })
        con.print(f"wrote {json_path}")
    if lut:
        table = build_lut(profiles, machine, date, torch.__version__)
        table["loadavg"] = list(os.getloadavg())  # the 1/5/15-min load: how much to trust the numbers
        write_json_atomic(lut, table)
        con.print(f"wrote {lut}: {len(table['entries'])} block signatures; predicted vs measured UNet: " + ", ".join(
            f"{n} {_f(v['predicted_ms'])} / {_f(v['ms_median'])} ms" for n, v in table["unet_ms"].items()))
    if plot:
        from ..profiling.plot import plot_profiles

        plot_profiles(profiles, plot)
        con.print(f"wrote {plot}")


def register(app: typer.Typer) -> None:
    """Add `profile` to the main app as a top-level command."""
    app.command("profile", help=HELP, short_help="Per-block and whole-UNet latency, components, lookup table, plot.")(
        profile)
