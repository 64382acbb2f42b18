"""`pocketdiff arch list` and `pocketdiff arch show NAME`: the presets and what one UNet forward costs.

    pocketdiff arch list [--resolution 512] [--json PATH]
    pocketdiff arch show NAME [--resolution 512] [--width 1.0] [--json PATH]
    pocketdiff arch relu UNET_DIR --out DIR      (softmax -> ReLU attention, same weights)

NAME is a preset (`pocketdiff arch list`), a spec file (JSON/YAML) or a saved FlexUNet directory (its config.json;
a pipeline directory with unet/ works too). Costs are counted on the meta device (no weights, ~1 s per model) for
batch 1, latent = resolution / 8, and a 77 x 768 text context; GFLOPs = 2 x MACs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..arch.presets import get_spec, list_presets
from ..arch.spec import ArchSpec
from ..errors import SpecError, UnknownPresetError

app = typer.Typer(help="UNet architectures: the presets, their blocks, params and FLOPs.", no_args_is_help=True)

REFERENCE = "sd15"


def resolve_spec(name: str, width: float = 1.0) -> ArchSpec:
    """A preset name, a spec file (.json/.yaml) or a saved FlexUNet / pipeline directory -> ArchSpec."""
    from ..validation import check_float

    check_float("--width", width, 0, 4, "the factor on every channel count", lo_open=True)
    if name in list_presets():
        narrowest = min(get_spec(name).channels)
        if narrowest * width < 8:
            raise SpecError(f"--width {width:g}: {name}'s narrowest level ({narrowest} channels) would keep fewer than "
                            f"8 channels; use --width >= {8 / narrowest:.3g}")
        return get_spec(name, width=width)
    path = Path(name)
    if path.is_dir():
        for cfg in (path / "config.json", path / "unet" / "config.json"):
            if cfg.is_file():
                spec = ArchSpec.load(cfg)
                break
        else:
            raise SpecError(f"{path} has neither config.json nor unet/config.json: not a saved FlexUNet")
    elif path.is_file():
        spec = ArchSpec.load(path)
    else:
        raise UnknownPresetError(f"unknown preset or spec file {name!r}; known presets: {', '.join(list_presets())}")
    if width != 1.0:
        raise SpecError(f"--width scales presets only; edit the channels of {path} instead")
    return spec


def check_resolution(resolution: int) -> None:
    from ..validation import check_int

    check_int("--resolution", resolution, 8, 8192, "image pixels; the spec checks the multiple it needs")


def _console():
    """Rich console; 160 columns when not a terminal (piped / captured), so that tables are not truncated."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _m(n: int) -> str:
    return f"{n / 1e6:,.1f}"


@app.command("list")
def list_cmd(
    resolution: int = typer.Option(512, help="image pixels (latent = resolution / 8)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the table here (atomically)"),
) -> None:
    """Every preset with params, ResNet / self-attention / cross-attention counts, GFLOPs and the ratio to SD-1.5."""
    from rich.table import Table

    from ..validation import check_output_file

    check_resolution(resolution)
    check_output_file("--json", json_path, (".json",))
    from ..io import write_json_atomic
    from ..profiling.flops import analyze

    costs = {n: analyze(get_spec(n), resolution) for n in list_presets()}
    ref = costs[REFERENCE].flops
    table = Table(title=f"UNet presets at {resolution}px (latent {resolution // 8}, batch 1, 77x768 context)")
    for col in ("preset", "channels", "params (M)", "ResNet", "SA", "CA", "GMACs", "GFLOPs", f"vs {REFERENCE}"):
        table.add_column(col, justify="left" if col in ("preset", "channels") else "right")
    rows = []
    for n, c in costs.items():
        k = c.spec.counts()
        table.add_row(n, ",".join(map(str, c.spec.channels)), _m(c.params), str(k["resnets"]), str(k["self_attn"]),
                      str(k["cross_attn"]), f"{c.macs / 1e9:,.1f}", f"{c.gflops:,.1f}", f"{c.flops / ref:.3f}")
        rows.append(dict(name=n, channels=list(c.spec.channels), params=c.params, params_m=c.params / 1e6,
                         resnets=k["resnets"], self_attn=k["self_attn"], cross_attn=k["cross_attn"],
                         transformers=k["transformers"], macs=c.macs, gflops=c.gflops, ratio_to_sd15=c.flops / ref))
    _console().print(table)
    if json_path:
        write_json_atomic(json_path, {"resolution": resolution, "presets": rows})


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="preset name, spec file (JSON/YAML) or saved FlexUNet directory"),
    resolution: int = typer.Option(512, help="image pixels (latent = resolution / 8)"),
    width: float = typer.Option(1.0, help="scale every channel count (presets only)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the costs here (atomically)"),
) -> None:
    """Channels, the blocks of every stage, block counts, params, MACs and GFLOPs of one forward."""
    from rich.table import Table

    from ..validation import check_output_file

    check_resolution(resolution)
    check_output_file("--json", json_path, (".json",))
    from ..io import write_json_atomic
    from ..profiling.flops import analyze

    spec = resolve_spec(name, width)
    cost = analyze(spec, resolution)
    k = spec.counts()
    con = _console()
    con.print(f"[bold]{spec.name}[/bold]  channels {list(spec.channels)}  at {resolution}px (latent {cost.latent}), "
              f"batch 1, {cost.context_len}x{spec.cross_attention_dim} context")
    con.print(f"ResNet blocks {k['resnets']}, self-attention {k['self_attn']}, cross-attention {k['cross_attn']} "
              f"({k['transformers']} transformer blocks); params {_m(cost.params)}M; "
              f"{cost.macs / 1e9:,.1f} GMACs = {cost.gflops:,.1f} GFLOPs")
    table = Table(title="stages (samplers counted in the stage they follow)")
    for col in ("stage", "res", "ch", "blocks", "params (M)", "GFLOPs", "% FLOPs"):
        table.add_column(col, justify="left" if col in ("stage", "blocks") else "right")
    stages = cost.stage_rows()
    for s in stages:
        blocks = s["blocks"] + (" +sampler" if s["samplers"] else "")
        table.add_row(s["stage"], str(s["resolution"]), str(s["channels"]), blocks.strip() or "-", _m(s["params"]),
                      f"{s['flops'] / 1e9:,.2f}", f"{100 * s['flops'] / cost.flops:.1f}")
    con.print(table)
    kinds = Table(title="by kind")
    for col in ("kind", "params (M)", "GFLOPs", "% FLOPs"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind, d in cost.by_kind().items():
        kinds.add_row(kind, _m(d["params"]), f"{d['flops'] / 1e9:,.2f}", f"{100 * d['flops'] / cost.flops:.1f}")
    con.print(kinds)
    if json_path:
        write_json_atomic(json_path, cost.to_dict())


@app.command("relu")
def relu_cmd(
    unet: Path = typer.Argument(..., help="a saved FlexUNet directory with softmax attention"),
    out: Path = typer.Option(..., "--out", "-o", help="where the ReLU-attention UNet goes"),
    kind: str = typer.Option("relu", "--attention", help="relu | softmax (convert back)"),
) -> None:
    """Switch every transformer's attention to ReLU attention (MobileDiffusion), keeping all weights.

    Fine-tune it after, by KD from its softmax parent (or convert and fine-tune in one: --arch PARENT --attention relu):
    pocketdiff train student --teacher models/shapes --teacher-unet PARENT --arch OUT --p-drop-tf 0 --p-drop-res 0
    """
    from ..arch.convert import with_attention
    from ..arch.unet import FlexUNet
    from ..models import save_unet

    src = FlexUNet.from_pretrained(unet)
    converted = with_attention(src, kind)
    n = sum(1 for *_, b in converted.spec.all_blocks() if b.kind == "tf")
    save_unet(converted, out, {"attention.json": {"from": str(unet), "attention": kind}})
    typer.echo(f"{unet} -> {out}: {n} transformer blocks now use {kind} attention; weights unchanged")
