"""`pocketdiff export`: a model directory -> ONNX Runtime / OpenVINO / ExecuTorch graphs that generate and eval run."""

from __future__ import annotations

from pathlib import Path

import typer

from pocketdiff.io import write_json_atomic


def export(
    model: Path = typer.Argument(..., help="model directory (diffusers layout: text_encoder, unet, vae, ...)"),
    fmt: str = typer.Option(..., "--format", help="onnx | openvino | executorch"),
    out: Path = typer.Option(..., "--out", help="the exported directory (replaced only when the export succeeds)"),
    unet: str = typer.Option(None, "--unet", help="a UNet subdirectory of MODEL (or a path); default: the "
                             "model's default row in demo.json, else unet/"),
    vae: str = typer.Option(None, "--vae", help="a VAE subdirectory of MODEL (or a path)"),
    quantize: str = typer.Option("none", "--quantize", help="none | fp16 | int8-weights | int8 | int8-hybrid "
                                 "(the UNet; int8 is calibrated on sampling trajectories of training prompts; "
                                 "int8-hybrid, openvino only: OpenVINO's SD recipe, docs/export.md)"),
    calibration_prompts: int = typer.Option(32, "--calibration-prompts", help="int8: prompts whose trajectories "
                                            "calibrate the activations (every step of each)"),
    threads: int = typer.Option(None, "--threads"),
    json_path: Path = typer.Option(None, "--json", help="the report: files, sizes, parity per network, versions"),
) -> None:
    """Export a pipeline's text encoder, UNet and decoder to a runtime; check parity against eager PyTorch."""
    from pocketdiff.export import export_model

    report = export_model(model, fmt, out, unet=unet, vae=vae, quantize=quantize, threads=threads,
                          calibration_prompts_n=calibration_prompts)
    for name, e in report["networks"].items():
        typer.echo(f"{name:13s} {e['quantize']:12s} {e['bytes'] / 1e6:8.2f} MB  max |diff| vs eager fp32 "
                   f"{e['parity_max_abs']:.2e}  ({', '.join(e['files'].values())})")
    typer.echo(f"wrote {out} ({report['backend']}, {report['export_s']:.0f} s); run it with "
               f"`pocketdiff generate --model {out} \"a red circle\"`")
    if json_path:
        write_json_atomic(json_path, report)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
