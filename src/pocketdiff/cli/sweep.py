"""`pocketdiff sweep`: SnapFusion's guidance sweep, domain FID against compositional accuracy and domain CLIP score.

    pocketdiff sweep --model models/shapes --model models/shapes --model models/shapes:unet_s8 \\
        --scheduler dpm --scheduler dpm++ --scheduler ddim --steps 8 --guidance 1.0:10.5:0.5 \\
        --prompts heldout-two --limit 200 --json out/sweep.json --plot out/sweep.png

Each `--model` is one curve: `DIR` (its own unet/) or `DIR:UNET` (a student UNet dir, relative to DIR or absolute).
`--steps`, `--scheduler` and `--label` are given once (for every model) or once per `--model`, so DDIM / DPM-Solver /
DPM-Solver++ baselines on the teacher are rows beside the distilled student. Every point is `evaluate_pipeline` on
the same prompts and seeds; CLIP scores all use one scorer (`--clip-model`, default the first model's directory; none
without its clip_image/). The table has the shape of SnapFusion's Table 2 (method, steps, FID, CLIP) plus accuracy:
each model at `--table-guidance` if given, else at its lowest-FID guidance. (A top-level command: `pocketdiff eval`
is already a single command, not a group.)
"""

from __future__ import annotations

from pathlib import Path

import typer

from pocketdiff.errors import DataError
from pocketdiff.io import write_json_atomic


def parse_model(spec: str) -> tuple[Path, Path | None]:
    """`DIR` -> (DIR, None); `DIR:UNET` -> (DIR, DIR/UNET or the absolute UNET)."""
    if Path(spec).is_dir() or ":" not in spec:
        return Path(spec), None
    root, unet = spec.rsplit(":", 1)
    unet_path = Path(unet) if Path(unet).is_absolute() else Path(root) / unet
    if not unet_path.is_dir():
        raise DataError(f"--model {spec!r}: no UNet directory at {unet_path}")
    return Path(root), unet_path


def _per_model(values: list, n: int, flag: str) -> list:
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise DataError(f"{flag}: give one value for all models or one per --model ({n}), got {len(values)}")
    return list(values)



def sweep(
    model: list[str] = typer.Option(..., "--model", help="DIR or DIR:UNET (a student UNet dir); repeat, one curve each"),
    label: list[str] = typer.Option(None, "--label", help="curve names, one per --model"),
    steps: list[int] = typer.Option([8], "--steps", help="sampling steps: once, or once per --model"),
    scheduler: list[str] = typer.Option(["ddim"], "--scheduler", help="ddim | dpm | dpm++: once, or once per --model"),
    guidance: list[str] = typer.Option(["1.0:10.5:0.5"], "--guidance", help="1.0:10.5:0.5 (start:stop:step) | 1,3,7.5"),
    prompts: list[str] = typer.Option(["heldout-two"], "--prompts", help="heldout-single | heldout-two | FILE; repeat"),
    limit: int = typer.Option(None, "--limit", help="only the first N prompts of each set"),
    seed: int = typer.Option(0, "--seed"),
    clip_model: Path = typer.Option(None, "--clip-model", help="CLIP scorer dir [default: the first model's dir]"),
    table_guidance: float = typer.Option(None, "--table-guidance", help="table at this w [default: lowest FID]"),
    json_path: Path = typer.Option(None, "--json"),
    plot: Path = typer.Option(None, "--plot", help="write the FID-vs-accuracy / FID-vs-CLIP curves (PNG)"),
    threads: int = typer.Option(None, "--threads"),
) -> None:
    """Guidance sweep: FID vs accuracy and vs CLIP score, one curve per model; a SnapFusion-Table-2-like table."""
    from rich.console import Console
    from rich.table import Table

    from pocketdiff.cli.generate import _check_sampling, _pipe
    from pocketdiff.evaluation.suite import evaluate_pipeline, load_prompts
    from pocketdiff.evaluation.sweep import parse_floats, plot_sweep, table_rows
    from pocketdiff.sampling.pipeline import SCHEDULERS

    from pocketdiff.validation import check_int, check_output_file

    check_int("--limit", limit, 1)
    check_int("--threads", threads, 1)
    check_output_file("--json", json_path, (".json",))
    check_output_file("--plot", plot, (".png",))
    parsed = [parse_model(m) for m in model]
    n = len(parsed)
    steps, scheduler = _per_model(steps, n, "--steps"), _per_model(scheduler, n, "--scheduler")
    for s in scheduler:
        if s not in SCHEDULERS:
            raise DataError(f"--scheduler {s!r}: choose one of {', '.join(SCHEDULERS)}")
    labels = _per_model(label, n, "--label") if label else [
        f"{root.name}{'/' + unet.name if unet else ''} {sch} {st}" for (root, unet), sch, st in zip(parsed, scheduler, steps)]
    ws = parse_floats(guidance)
    if not ws:
        raise DataError("--guidance: no values")
    clip_dir = clip_model or parsed[0][0]
    for (root, _), st in zip(parsed, steps):  # every model's steps and guidance in range before any loads
        _check_sampling(root, st, ws, threads)
    for pset in prompts:
        load_prompts(pset, limit)

    pipes, models = {}, []
    for (root, unet), sch, st, lab in zip(parsed, scheduler, steps, labels):
        key = (str(root), str(unet))
        if key not in pipes:
            pipes[key] = _pipe(root, unet, None, "ddim", threads)  # the solver is chosen per call below
        points = [evaluate_pipeline(pipes[key], pset, st, w, sch, seed, limit, clip_model_dir=clip_dir).as_dict()
                  for pset in prompts for w in ws]
        models.append({"label": lab, "model": str(root), "unet": None if unet is None else str(unet),
                       "scheduler": sch, "steps": st, "points": points})
    rows = table_rows(models, table_guidance)

    pick = f"w = {table_guidance:g} (nearest)" if table_guidance is not None else "each model's lowest-FID guidance"
    table = Table(title=f"guidance sweep {ws[0]:g}..{ws[-1]:g} ({len(ws)} values); table at {pick}")
    for col in ("model", "prompts", "steps", "w", "FID", "CLIP", "accuracy", "UNet ms/img"):
        table.add_column(col, justify="right")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        table.add_row(r["label"], r["prompt_set"], str(r["steps"]), f"{r['guidance']:g}", fmt(r["fid"], ".2f"),
                      fmt(r["clip_score"], ".2f"), f"{100 * r['accuracy']:.1f}%", fmt(r["unet_ms"], ".0f"))
    Console().print(table)
    if json_path:
        write_json_atomic(json_path, {"guidance": ws, "prompt_sets": list(prompts), "limit": limit, "seed": seed,
                               "clip_model": str(clip_dir), "table_guidance": table_guidance, "models": models,
                               "table": rows})
    if plot:
        typer.echo(f"plot: {plot_sweep(models, plot)}")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
