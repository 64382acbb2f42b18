"""`pocketdiff prune decoder`: structured channel pruning of a VAE decoder (SnapFusion), encoder untouched.

    pocketdiff prune decoder --vae sd|shapes|DIR --ratio 0.5 [--importance l1|l2|random] [--seed 0] --out DIR
                             [--json PATH]

`sd` is SD-1.5's VAE architecture with random weights (no download), `shapes` the shipped shapes-world VAE, DIR a
VAE directory or a model directory with vae/. The result is a `SlimAutoencoderKL` directory (diffusers format, plus
pruning.json with widths and parameter counts) that `pocketdiff generate --vae DIR` and `pocketdiff train decoder
--set options.student_dir=DIR` read. Bad input (a ratio outside (0, 1), a directory that is not a VAE or has no
decoder) raises a PocketDiffError: `error: ...`, exit 2. See pocketdiff.pruning.decoder for the method.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pocketdiff.io import write_text_atomic

app = typer.Typer(help="Make components smaller by structured pruning.", no_args_is_help=True)


@app.command("decoder")
def decoder_cmd(
    vae: str = typer.Option(..., "--vae", help="sd (SD-1.5 architecture, random weights) | shapes | a VAE directory"),
    ratio: float = typer.Option(0.5, "--ratio", help="fraction of every layer's channels to remove, in (0, 1)"),
    importance: str = typer.Option("l1", "--importance", help="l1 (filter L1 norm) | l2 | random"),
    seed: int = typer.Option(0, "--seed", help="seed of --importance random"),
    out: Path = typer.Option(..., "--out", "-o", help="output VAE directory (replaced if it holds a model)"),
    json_path: Path = typer.Option(None, "--json", help="also write the report (widths, params) here"),
) -> None:
    """Prune a VAE decoder's channels (Torch-Pruning, L1 importance); save a SlimAutoencoderKL directory."""
    from pocketdiff.pruning.decoder import (IMPORTANCES, PruningError, check_prunable, prune_decoder,
                                            pruning_report, resolve_vae, save_vae)

    from pocketdiff.validation import check_output_dir, check_output_file

    check_output_dir("--out", out)
    check_output_file("--json", json_path, (".json",))
    if importance not in IMPORTANCES:  # before loading anything
        raise PruningError(f"--importance {importance!r}: choose one of {', '.join(IMPORTANCES)}")
    if not 0.0 < ratio < 1.0:
        raise PruningError(f"--ratio must be in (0, 1) (the fraction of channels removed), got {ratio}")
    source = resolve_vae(vae)
    check_prunable(source, ratio)
    slim = prune_decoder(source, ratio=ratio, importance=importance, seed=seed)
    report = pruning_report(source, slim, source=str(vae), ratio=ratio, importance=importance, seed=seed)
    save_vae(slim, out, report)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1))
    m = 1e6
    typer.echo(f"decoder widths {report['decoder_widths_before']} -> {report['decoder_widths_after']}; "
               f"decode params {report['decoder_params_before'] / m:.2f}M -> {report['decoder_params_after'] / m:.2f}M "
               f"({report['decoder_params_ratio']:.3f}x); encoder unchanged ({report['encoder_params'] / m:.2f}M)")
    typer.echo(f"wrote {out}")
