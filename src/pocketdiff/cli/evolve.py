"""`pocketdiff evolve`: SnapFusion's architecture evolving (Algorithm 1) of a trained teacher's UNet.

    pocketdiff evolve --teacher models/shapes --lut LUT.json --target-speedup 1.5 --out runs/evolve
        [--target-latency MS] [--criterion latency|flops|random] [--metric clip|accuracy] [--group 2]
        [--config evolve|PATH.yaml] [--set first_steps=300] [--json PATH]
    pocketdiff evolve --dry-run --arch sd15 --lut LUT.json [--top 20] [--json PATH]

Rerun the same command to continue a stopped search (state in --out). The lookup table comes from
`pocketdiff profile UNET_DIR_OR_PRESET --resolution R --lut LUT.json` on the backend the network should be fast on.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pocketdiff.errors import DataError

HELP = __doc__.split("\n\n")[0]


def evolve(
    teacher: Path = typer.Option(None, "--teacher", help="trained model dir whose unet/ evolves [default: the default model]"),
    lut: Path = typer.Option(None, "--lut", help="latency lookup table (pocketdiff profile ... --lut)"),
    target_latency: float = typer.Option(None, "--target-latency", help="predicted UNet ms to reach"),
    target_speedup: float = typer.Option(None, "--target-speedup", help="teacher's predicted ms / this"),
    criterion: str = typer.Option(None, help="latency (Algorithm 1) | flops | random (the controls)"),
    metric: str = typer.Option(None, help="dQuality: clip (domain CLIP score) | accuracy (judge)"),
    group: int = typer.Option(None, help="actions per round"),
    out: Path = typer.Option(Path("runs/evolve"), "--out", "-o", help="run dir (state, rounds, report)"),
    config: str = typer.Option("evolve", "--config", "-c", help="shipped config NAME or YAML PATH"),
    set_: list[str] = typer.Option(None, "--set", help="any other config key: --set train_steps=50"),
    dry_run: bool = typer.Option(False, "--dry-run", help="rank the first round's actions by latency (no weights)"),
    arch: str = typer.Option("sd15", help="--dry-run: preset, spec file or UNet dir"),
    top: int = typer.Option(20, help="--dry-run: rows to show"),
    json_path: Path = typer.Option(None, "--json", help="write the report (or the dry run's ranking) as JSON"),
    clip_model: Path = typer.Option(None, "--clip-model", help="score with this transformers CLIP directory "
                                    "(the real path: SD-1.5 has no judge)"),
    probe_captions: Path = typer.Option(None, "--probe-captions", help="the probe's captions (a text file, one per "
                                        "line; never the evaluation captions)"),
    train_data: str = typer.Option(None, "--data", help="training data of the robust-training rounds (the "
                                   "student stage's options.data)"),
) -> None:
    """Evolve a UNet: remove the blocks with least quality per ms, then copy the most valuable (Algorithm 1)."""
    from pocketdiff.io import write_json_atomic
    from pocketdiff.profiling.lut import load_lut, predict_latency
    from pocketdiff.validation import check_int, check_output_dir, check_output_file

    check_output_file("--json", json_path, (".json",))
    check_int("--group", group, 1)
    check_int("--top", top, 1)
    if not dry_run:
        check_output_dir("--out", out)
    if dry_run:
        from pocketdiff.cli.arch import resolve_spec
        from pocketdiff.evolving import dry_run as rank

        if lut is None:
            raise DataError("--dry-run needs --lut (write one with `pocketdiff profile sd15 --lut LUT.json`)")
        table, spec = load_lut(lut), resolve_spec(arch)
        rows = rank(spec, table)
        total = predict_latency(spec, table)
        typer.echo(f"{spec.name}: predicted {total:,.1f} ms per UNet step on {table.get('backend')} "
                   f"({table.get('machine', {}).get('cpu', '?')}, {table['resolution']}px); first round's removal "
                   f"candidates by latency saved:")
        typer.echo(f"{'block':<12}{'kind':<6}{'ms':>10}{'% UNet':>8}{'GMACs':>9}")
        for r in rows[:top]:
            typer.echo(f"{r['block']:<12}{r['kind']:<6}{r['ms']:>10,.1f}{100 * r['share']:>7.1f}%{r['gmacs']:>9.2f}")
        if json_path:
            write_json_atomic(json_path, {"arch": spec.name, "predicted_ms": total, "lut": str(lut), "actions": rows})
        return

    from pocketdiff.evolving import EvolveConfig
    from pocketdiff.evolving import evolve as run
    from pocketdiff.training.config import deep_merge, from_dict, parse_set, read_config_dict

    if clip_model is not None and metric is None:
        metric = "clip"  # the user's CLIP: the judge is the shapes world's
    data = read_config_dict(config)
    flags = {"teacher_dir": teacher and str(teacher), "lut": lut and str(lut), "target_ms": target_latency,
             "target_speedup": target_speedup, "criterion": criterion, "metric": metric, "group": group,
             "clip_model": clip_model and str(clip_model), "probe_captions": probe_captions and str(probe_captions),
             "student_options": {"data": train_data} if train_data else None}
    if target_latency is not None or target_speedup is not None:  # a flag replaces the config's target
        data.pop("target_ms", None), data.pop("target_speedup", None)
    data = deep_merge(data, {k: v for k, v in flags.items() if v is not None})
    data = deep_merge(data, parse_set(set_))
    data.pop("presets", None)
    cfg = from_dict(EvolveConfig, data)
    if not cfg.lut:
        raise DataError("--lut is required (write one with `pocketdiff profile UNET_DIR --resolution R --lut PATH`)")
    report = run(cfg, out, log=typer.echo)
    typer.echo(f"evolved UNet in {out / 'unet'}: predicted {report['predicted_ms']:.2f} ms vs teacher "
               f"{report['teacher_predicted_ms']:.2f} ms; {cfg.metric} {report['final_quality'][cfg.metric]:.3f}; "
               f"report {out / 'report.json'}, plot {out / 'trajectory.png'}")
    if json_path:
        write_json_atomic(json_path, report)


def register(app: typer.Typer) -> None:
    app.command("evolve", help=__doc__, short_help=HELP)(evolve)
