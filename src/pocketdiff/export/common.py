"""What every export format shares: its errors, the manifest of an exported directory, the check that a runtime is
installed (naming the extra that installs it)."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from pathlib import Path

from ..errors import ModelDirError, PocketDiffError

MANIFEST = "pocketdiff_export.json"
# bumped whenever the layout of an exported directory or the networks' signatures change: an older directory is refused
# (with the command that rebuilds it) rather than run with the wrong inputs
LAYOUT_VERSION = 1
FORMATS = ("onnx", "openvino", "executorch")
BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch-xnnpack"}  # what runs each format
QUANTIZE = ("none", "fp16", "int8-weights", "int8", "int8-hybrid")
CALIBRATED = ("int8", "int8-hybrid")  # the modes that need the calibration set
NETWORKS = ("text_encoder", "unet", "decoder")
# what each format needs at run time (import name, distribution): all are in the `export` extra
RUNTIME_MODULES = {
    "onnx": [("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript")],
    "openvino": [("onnx", "onnx"), ("onnxscript", "onnxscript"), ("openvino", "openvino"), ("nncf", "nncf")],
    "executorch": [("executorch", "executorch"), ("torchao", "torchao")],
}


class ExportError(PocketDiffError):
    """An export that cannot be made or run (unknown format, missing runtime, stale export directory)."""


class ParityError(ExportError):
    """An fp32 export whose outputs differ from eager PyTorch by more than the tolerance."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def check_quantize(q: str) -> str:
    if q not in QUANTIZE:
        raise ExportError(f"unknown --quantize {q!r}; choose one of {', '.join(QUANTIZE)}")
    return q


def require_runtime(fmt: str) -> None:
    """Import the runtime's modules now, so that a missing one fails before any work with the install command."""
    for module, dist in RUNTIME_MODULES[check_format(fmt)]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ExportError(f"--format {fmt} needs the Python package {dist!r}, which is not installed ({e}); "
                              "install the export extra: pip install 'pocketdiff[export]'") from None


def runtime_installed(fmt: str) -> bool:
    """Whether every module `fmt` needs at run time imports (`require_runtime` without the error)."""
    try:
        require_runtime(fmt)
    except ExportError:
        return False
    return True


def runtime_versions(fmt: str) -> dict:
    out = {"torch": importlib.metadata.version("torch")}
    for _, dist in RUNTIME_MODULES[fmt]:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    """The manifest of an exported directory, refused if another layout version wrote it."""
    root = Path(path)
    file = root / MANIFEST
    if not file.is_file():
        raise ModelDirError(f"{root} is not an exported model directory (no {MANIFEST}); make one with "
                            "`pocketdiff export MODEL_DIR --format onnx --out DIR`")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{file} is not valid JSON ({e}); export the model again") from None
    version = manifest.get("layout_version")
    if version != LAYOUT_VERSION:
        raise ExportError(f"{root} was exported with layout version {version} (pocketdiff "
                          f"{manifest.get('pocketdiff_version', '?')}), this pocketdiff reads version {LAYOUT_VERSION}: "
                          f"export it again with `pocketdiff export {manifest.get('source', {}).get('model', 'MODEL_DIR')}"
                          f" --format {manifest.get('format', 'onnx')} --out {root}`")
    for name in NETWORKS:
        for f in manifest["networks"][name]["files"].values():
            if not (root / f).is_file():
                raise ModelDirError(f"{root} lacks {f} (the {name}): the export is incomplete; export it again")
    return manifest
