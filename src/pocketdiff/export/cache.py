"""`pocketdiff generate --backend FORMAT` on an ordinary model directory: the model is exported once (fp32, parity
checked) into a cache directory keyed by the weights it was made from, and reused while those files are unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .common import LAYOUT_VERSION, is_export_dir

BACKENDS = {"torch": None, "onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch"}


def cache_root() -> Path:
    return Path(os.environ.get("POCKETDIFF_CACHE", Path.home() / ".cache" / "pocketdiff")) / "exports"


def _key(model: Path, unet: Path | None, vae: Path | None, fmt: str) -> str:
    h = hashlib.sha256(f"{LAYOUT_VERSION}|{fmt}".encode())
    for part in (model / "text_encoder", model / "tokenizer", model / "scheduler", unet or model / "unet",
                 vae or model / "vae"):
        for f in sorted(Path(part).glob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def check_backend(name: str) -> str | None:
    """A `--backend` name -> the export format (None for eager PyTorch)."""
    from .common import ExportError

    if name not in BACKENDS:
        raise ExportError(f"unknown --backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def cached_export(model: Path, fmt: str, unet: Path | None = None, vae: Path | None = None,
                  threads: int | None = None) -> Path:
    """The cached fp32 export of (model, unet, vae) in `fmt`, made now if missing (minutes, once)."""
    from .exporter import export_model

    out = cache_root() / f"{Path(model).resolve().name}-{fmt}-{_key(Path(model), unet, vae, fmt)}"
    if not is_export_dir(out):
        export_model(model, fmt, out, unet=unet, vae=vae, threads=threads, default_row=False)
    return out
