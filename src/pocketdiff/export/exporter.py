"""`export_model`: a model directory -> a directory of runtime graphs that `pocketdiff generate/eval` run.

Layout of an exported directory: `pocketdiff_export.json` (the manifest: format, quantization, files, input shapes,
the model's default sampling settings, parity figures, library versions), `tokenizer/` and `scheduler/` copied from
the model, and one graph per network (ExecuTorch: one per batch size). The whole directory is written beside `--out`
and swapped in only when every network is written and (fp32) passed its parity check: a failed export leaves nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelDirError
from ..io import atomic_dir
from .common import (BACKEND, CALIBRATED, LAYOUT_VERSION, MANIFEST, NETWORKS, ExportError, ParityError, check_format,
                     check_quantize, is_export_dir, require_runtime, runtime_versions)
from .networks import DecoderNet, Shapes, TextEncoderNet, UNetNet, calibration_prompts, example_inputs, \
    record_unet_inputs
from .runtimes import (export_executorch, export_onnx, export_openvino, load_runner, _quiet)

PARITY_TOL = 1e-3  # max |runtime - eager fp32| for an fp32 export, per network (issue #30)
ET_BATCHES = {"text_encoder": [1], "unet": [2, 1], "decoder": [1]}


def _resolve(model: Path, name: str | Path | None, what: str) -> Path | None:
    if name is None:
        return None
    for p in (model / str(name), Path(name)):
        if (p / "config.json").is_file():
            return p
    raise ModelDirError(f"--{what} {name}: neither {model / str(name)} nor {name} is a {what} directory "
                        "(no config.json)")


def _default_row(model: Path) -> dict:
    index = model / "demo.json"
    if not index.is_file():
        return {}
    return next((r for r in json.loads(index.read_text()) if r.get("default")), {})


def export_model(model: str | Path, fmt: str, out: str | Path, unet: str | Path | None = None,
                 vae: str | Path | None = None, quantize: str = "none", threads: int | None = None,
                 calibration_prompts_n: int = 32, tolerance: float = PARITY_TOL, progress: bool = True,
                 default_row: bool = True) -> dict:
    """Export the text encoder, UNet and decoder of `model` to `fmt`; returns the report (also the manifest).
    Without `unet`, the UNet (and decoder, sampling settings) of the model's default row in demo.json, as `generate`
    runs it (`default_row=False`: the model's own unet/ and vae/)."""
    from ..sampling.pipeline import load_pipeline

    check_format(fmt)
    check_quantize(quantize)
    if quantize == "int8-hybrid" and fmt != "openvino":
        raise ExportError(f"--quantize int8-hybrid is OpenVINO's recipe (NNCF); for --format {fmt} use int8 or "
                          "int8-weights")
    require_runtime(fmt)
    model, out = Path(model), Path(out)
    if is_export_dir(model):
        raise ExportError(f"{model} is already an exported directory; export from the model directory it came from")
    if not model.is_dir():
        raise ModelDirError(f"model directory {model} does not exist")
    if out.resolve() == model.resolve():
        raise ExportError("--out must not be the model directory")
    if threads:
        torch.set_num_threads(threads)
    row = _default_row(model) if unet is None and default_row else {}
    unet_dir = _resolve(model, unet if unet is not None else row.get("unet"), "unet")
    vae_dir = _resolve(model, vae if vae is not None else (row.get("vae") if unet is None else None), "vae")
    t_start = time.perf_counter()
    pipe = load_pipeline(model, unet_dir=unet_dir, vae_dir=vae_dir, scheduler=row.get("scheduler", "ddim"))
    shapes = Shapes.of(pipe)
    nets = {"text_encoder": TextEncoderNet(pipe.text_encoder).eval(), "unet": UNetNet(pipe.unet).eval(),
            "decoder": DecoderNet(pipe.vae).eval()}
    vocab = int(pipe.text_encoder.config.vocab_size)
    inputs = {b: example_inputs(shapes, b, vocab=vocab) for b in (1, 2)}
    default = {"steps": row.get("steps", 50), "guidance": row.get("guidance", 3.0),
               "scheduler": row.get("scheduler", "ddim"), "name": row.get("name")}

    calib = None
    if quantize in CALIBRATED:
        prompts = calibration_prompts(calibration_prompts_n)
        calib = record_unet_inputs(pipe, prompts, default["steps"], default["guidance"], default["scheduler"])

    report: dict = {
        "layout_version": LAYOUT_VERSION, "pocketdiff_version": importlib.metadata.version("pocketdiff")
        if _installed() else "source", "format": fmt, "backend": BACKEND[fmt], "quantize": quantize,
        "quantized_networks": [] if quantize == "none" else list(NETWORKS) if quantize == "int8-hybrid" else ["unet"],
        "source": {"model": str(model), "unet": unet_dir and str(unet_dir), "vae": vae_dir and str(vae_dir)},
        "shapes": shapes.__dict__, "scaling_factor": float(pipe.vae.config.scaling_factor),
        "prediction": pipe.scheduler.config.get("prediction_type"), "default": default,
        "calibration": None if calib is None else {
            "prompts": calibration_prompts_n, "split": "train", "steps": default["steps"],
            "guidance": default["guidance"], "samples": len(calib),
            "what": "the UNet's inputs at every step of 8-step sampling trajectories (timestep-aware)"},
        "parity_tolerance": tolerance, "versions": runtime_versions(fmt), "networks": {},
    }
    # int8-hybrid: the text encoder and decoder int8 weight-only beside the selectively quantized UNet
    other = "int8-weights" if quantize == "int8-hybrid" else "none"
    steps_ = [(n, quantize if n == "unet" else other) for n in NETWORKS]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps_), desc=f"export {fmt}", leave=False)
    with atomic_dir(out) as tmp:
        for c in ("tokenizer", "scheduler"):
            shutil.copytree(model / c, tmp / c)
        for name, q in steps_:
            t0 = time.perf_counter()
            files = _export_network(fmt, name, nets[name], inputs, tmp, q, calib)
            entry = {"files": files, "quantize": q, "export_s": round(time.perf_counter() - t0, 2),
                     "bytes": _bytes(tmp, files.values())}
            entry["parity"] = _parity(fmt, name, nets[name], inputs, tmp, files, threads)
            entry["parity_max_abs"] = max(p["max_abs"] for p in entry["parity"])
            report["networks"][name] = entry
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        report["export_s"] = round(time.perf_counter() - t_start, 1)
        failed = {n: e["parity_max_abs"] for n, e in report["networks"].items()
                  if e["quantize"] == "none" and not e["parity_max_abs"] <= tolerance}
        report["parity_passed"] = not failed
        if failed:
            figures = ", ".join(f"{n} {v:.2e}" for n, v in failed.items())
            raise ParityError(f"parity check failed for the {fmt} export ({figures} max |diff| against eager fp32, "
                              f"tolerance {tolerance:g}); nothing was written to {out}")
        (tmp / MANIFEST).write_text(json.dumps(report, indent=2))
        # the model's default sampling settings, as `generate` reads them from any model directory
        name = f"{default['name'] or 'model'} ({BACKEND[fmt]}{'' if quantize == 'none' else ', ' + quantize})"
        (tmp / "demo.json").write_text(json.dumps([{"name": name, "steps": default["steps"], "default": True,
                                                    "guidance": default["guidance"],
                                                    "scheduler": default["scheduler"]}]))
    return report


def _installed() -> bool:
    try:
        importlib.metadata.version("pocketdiff")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _bytes(root: Path, files) -> int:
    """Bytes on disk of a network: its graph files and their sidecars (ONNX external data, OpenVINO .bin)."""
    total = 0
    for f in files:
        p = root / f
        sidecars = {p} | set(p.parent.glob(p.name + ".data")) | set(p.parent.glob(p.stem + ".onnx.data"))
        if p.suffix == ".xml":
            sidecars.add(p.with_suffix(".bin"))
        total += sum(s.stat().st_size for s in sidecars if s.is_file())
    return total


def _export_network(fmt: str, name: str, net, inputs: dict, root: Path, quantize: str, calib) -> dict[str, str]:
    from . import quantize as qz

    args = inputs[2][name]
    if fmt == "executorch":
        files = {}
        for b in ET_BATCHES[name]:
            f = f"{name}_b{b}.pte"
            if quantize == "none":
                export_executorch(net, inputs[b][name], root / f)
            else:
                qz.executorch_quantize(net, inputs[b][name], root / f, quantize, calib)
            files[str(b)] = f
        return files
    onnx_file = root / f"{name}.onnx" if fmt == "onnx" else root / f".{name}.fp32.onnx"
    export_onnx(net, name, args, onnx_file)
    if fmt == "onnx":
        if quantize == "none":
            return {"any": onnx_file.name}
        dst = root / f"{name}.{quantize}.onnx"
        qz.onnx_quantize(onnx_file, dst, quantize, calib)
        _remove_onnx(onnx_file)
        return {"any": dst.name}
    try:  # openvino, from the ONNX graph
        dst = root / f"{name}.xml"
        if quantize == "none":
            export_openvino(onnx_file, dst)
        else:
            qz.openvino_quantize(onnx_file, dst, quantize, calib)
    finally:
        _remove_onnx(onnx_file)
    return {"any": dst.name}


def _remove_onnx(path: Path) -> None:
    for p in [path, *path.parent.glob(path.name + ".data"), *path.parent.glob(path.stem + ".onnx.data")]:
        p.unlink(missing_ok=True)


@torch.no_grad()
def _parity(fmt: str, name: str, net, inputs: dict, root: Path, files: dict, threads: int | None) -> list[dict]:
    """Max abs difference against eager fp32 on fixed inputs, at batch 2 (the CFG batch) and batch 1."""
    runner = load_runner(fmt, files, root, threads)
    rows = []
    for b in (2, 1):
        args = inputs[b][name]
        ref = net(*args).float().numpy()
        got = runner(*[a.numpy() for a in args])
        rows.append({"batch": b, "max_abs": float(np.abs(got.astype(np.float32) - ref).max()),
                     "ref_max_abs": float(np.abs(ref).max())})
    return rows
