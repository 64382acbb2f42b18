"""`pocketdiff`: the command line. Every `PocketDiffError` becomes `error: <message>` on stderr and exit code 2."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: spin-waiting slows a shared box 3-8x

import sys

import typer

from ..errors import PocketDiffError


def build_app() -> typer.Typer:
    from . import arch, bench, data, evolve, export, generate, profile, prune, sweep, train

    app = typer.Typer(help="Efficient mobile text-to-image diffusion (SnapFusion, MobileDiffusion).",
                      no_args_is_help=True, pretty_exceptions_enable=False)
    app.add_typer(arch.app, name="arch")
    app.add_typer(train.app, name="train")
    app.add_typer(prune.app, name="prune")
    app.add_typer(data.app, name="data")
    profile.register(app)
    generate.register(app)
    sweep.register(app)
    evolve.register(app)
    bench.register(app)
    export.register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, prog_name="pocketdiff")
    except PocketDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
