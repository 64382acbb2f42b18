"""`pocketdiff bench`: how long one 512px image takes, end to end, with each configuration on this machine.

    pocketdiff bench [--config NAME ...] [--dtype auto|fp32|bf16 ...] [--backend eager|eager-cl|compile|onnxruntime|openvino|executorch ...]
        [--resolution 512 ...] [--batch 1 ...] [--runs 3] [--warmup 1] [--threads T] [--json PATH] [--plot PNG]
    pocketdiff bench --list
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import typer

HELP = "\n\n".join(" ".join(par.split()) for par in """
The talk's latency table on this machine: text encoder + steps x UNet step (batch 2 with classifier-free guidance)
+ VAE decoder, for one image, full-size architectures with random weights (latency does not depend on the values).
Each distinct component is timed once per round, all of them round-robin in one process, so every row shares the
machine's noise; SD-1.5's 50 steps are one step x 50. Medians over --runs after --warmup; the spread is the min / max
of the per-round totals. The speed-up is against sd15-50-cfg (SD-1.5, fp32 eager) measured in the same run.

--dtype and --backend take one or more values; every configuration except the baseline runs with each combination
(auto = bf16 where the CPU has native bf16, avx512_bf16 / AMX, else fp32). Several --resolution / --batch values give
the scaling panel of --plot (use --no-baseline there: SD-1.5 at 768px is slow).

The default run (7 configurations, 3 rounds) takes about 3-5 minutes on 2 cores and ~8 GB of RAM.
""".strip().split("\n\n"))


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for x in values or [] for v in x.split(",") if v.strip()]


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def bench(
    config: list[str] = typer.Option(None, "--config", "-c", help="configuration names (default: the standard set; "
                                     "see --list); comma-separated or repeated"),
    dtype: list[str] = typer.Option(None, "--dtype", help="auto | fp32 | bf16, one or more (not the baseline)"),
    backend: list[str] = typer.Option(None, "--backend", help="eager | eager-cl | compile | onnxruntime | "
                                      "openvino | executorch (fp32 exports, export time excluded), one or more (not "
                                      "the baseline)"),
    resolution: list[str] = typer.Option(["512"], "--resolution", help="image side in pixels, one or more"),
    batch: list[str] = typer.Option(["1"], "--batch", help="images per call, one or more"),
    runs: int = typer.Option(3, "--runs"),
    warmup: int = typer.Option(1, "--warmup"),
    threads: int = typer.Option(None, "--threads", help="default: every core this process may use"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="include sd15-50-cfg (the speed-up's "
                                  "reference)"),
    width: float = typer.Option(1.0, "--width", help="scale every model's widths (quick looks; not the real "
                                "pipeline)"),
    clock: str = typer.Option("wall", "--clock", help="wall | cpu (this process's CPU time: robust on a shared "
                              "machine; use with --threads 1)"),
    json_path: Path = typer.Option(None, "--json", help="write every timing, the machine, load and versions here"),
    plot: Path = typer.Option(None, "--plot", help="bar chart PNG (+ scaling panel for several resolutions/batches)"),
    list_: bool = typer.Option(False, "--list", help="list the configurations and backends, then exit"),
) -> None:
    from rich.console import Console
    from rich.table import Table

    from pocketdiff.bench import BASELINE, DEFAULT_RUN, get_config, list_backends, list_configs
    from pocketdiff.errors import SpecError

    import sys

    con = Console(width=None if sys.stdout.isatty() else 200)
    if list_:
        t = Table(title="pocketdiff bench configurations", title_justify="left")
        for col in ("name", "UNet", "steps", "CFG", "decoder", "text encoder", "dtype", "backend", "note"):
            t.add_column(col)
        for n in list_configs():
            c = get_config(n)
            t.add_row(("* " if n in DEFAULT_RUN else "  ") + n, c.unet, str(c.steps), "yes" if c.cfg else "no",
                      c.decoder, c.text_encoder, c.dtype, c.backend, c.note)
        con.print(t)
        con.print("* = in the default run. backends: " + ", ".join(list_backends()))
        return

    try:
        resolutions = [int(v) for v in _split(resolution)]
        batches = [int(v) for v in _split(batch)]
    except ValueError:
        raise SpecError("--resolution / --batch take integers, e.g. --resolution 256,512,768 --batch 1,2,4") from None
    names = _split(config) or list(DEFAULT_RUN)
    for n in names:
        get_config(n)  # unknown names fail before anything is built
    if baseline and BASELINE not in names:
        names = [BASELINE, *names]
    if not baseline:
        names = [n for n in names if n != BASELINE]
        if not names:
            raise SpecError("--no-baseline leaves no configuration: name one with --config")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from diffusers.utils import logging as dlog

    from pocketdiff.bench.run import Progress as Hooks, run_bench
    from pocketdiff.io import write_json_atomic

    dlog.set_verbosity_error()  # ModelMixin.to(dtype) warns about fp32-kept modules FlexUNet does not have
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    state = {}
    tty = sys.stderr.isatty()

    def step(d: str) -> None:
        bar.update(state["task"], description=d, advance=1 if state.get("n") else 0)
        state.update(n=1)
        rnd = d.split(":")[0]
        if not tty and rnd != state.get("round"):  # a log (nohup): one line per round instead of the bar
            state["round"] = rnd
            print(f"{rnd} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)

    hooks = Hooks(start=lambda total: state.update(task=bar.add_task("timing", total=total)), step=step,
                  log=lambda msg: None if tty else print(msg, file=sys.stderr, flush=True))
    with bar:
        res = run_bench(names, resolutions=resolutions, batches=batches, runs=runs, warmup=warmup, threads=threads,
                        dtypes=_split(dtype) or None, backends=_split(backend) or None, width=width, progress=hooks,
                        clock=clock)
    out = res.to_dict()
    out["command"] = "pocketdiff bench " + " ".join(sys.argv[2:]) if out.get("command") is None \
        else out["command"]

    m = out["machine"]
    con.print(f"{m['cpu']}, {m['cores']} cores, {out['threads']} threads, native bf16: {out['native_bf16']}; torch "
              f"{out['versions'].get('torch')}; {runs} runs after {warmup} warm-up; load "
              f"{out['load_start']['loadavg'][0]:.1f} -> {out['load_end']['loadavg'][0]:.1f}"
              + ("" if width == 1.0 else f"; WIDTH {width}: scaled-down models")
              + ("" if clock == "wall" else "; CPU-time clock"))
    for r0 in resolutions:
        for b0 in batches:
            t = Table(title=f"{r0}px, batch {b0}: ms (medians; per image = text + steps x UNet + decoder, / batch)",
                      title_justify="left")
            for col in ("config", "dtype", "backend", "text enc", "UNet step", "steps", "UNet all", "decoder",
                        "per image", "min-max", f"x {BASELINE}", "per-round", "UNet GFLOP/s", "matmul GFLOP/s"):
                t.add_column(col, justify="left" if col in ("config", "dtype", "backend") else "right")
            for r in sorted((r for r in out["rows"] if r["resolution"] == r0 and r["batch"] == b0),
                            key=lambda r: -r["ms_per_image"]):
                sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
                spr = "-" if r["speedup_per_round"] is None else f"{r['speedup_per_round']:.1f}x"
                t.add_row(r["name"], r["dtype"], r["backend"], _ms(r["text_ms"]), _ms(r["unet_step_ms"]),
                          f"{r['steps']}{' x2' if r['cfg'] else ''}", _ms(r["unet_ms"]), _ms(r["decoder_ms"]),
                          _ms(r["ms_per_image"]), f"{_ms(r['ms_per_image_min'])}-{_ms(r['ms_per_image_max'])}",
                          sp, spr, f"{r['unet_gflop_s']:.0f}",
                          "-" if r["matmul_gflop_s"] is None else f"{r['matmul_gflop_s']:.0f}")
            con.print(t)
    if json_path:
        write_json_atomic(json_path, out)
        con.print(f"wrote {json_path}")
    if plot:
        from pocketdiff.bench.plot import plot_bench

        plot_bench(out, plot)
        con.print(f"wrote {plot}")


def register(app: typer.Typer) -> None:
    app.command("bench", help=HELP)(bench)
