"""`pocketdiff generate --backend FORMAT` on an ordinary model directory: the model is exported once (fp32, parity
checked) into a cache directory keyed by the weights it was made from, and reused while those files are unchanged.

`--backend auto` (the default of generate and eval): the backend whose UNet step was measured fastest for this model,
dtype and thread count on this CPU. The first time, the model is exported to ONNX (cached as above) and one UNet step
(the CFG batch of 2) is timed in eager PyTorch, in onnxruntime and in OpenVINO, interleaved; OpenVINO compiles that
same ONNX file (its CPU plugin reads ONNX directly), so one export serves both runtimes. The choice and its figures are
kept in `auto_backend.json` beside the exports. ExecuTorch is not a candidate: its XNNPACK fp32 UNet step was 1.4x
slower than eager PyTorch on x86 (docs/export.md), and its static-shape programs cost minutes of export each."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .common import LAYOUT_VERSION, is_export_dir, runtime_installed

BACKENDS = {"auto": None, "torch": None, "onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch"}


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


AUTO_CANDIDATES = ("torch", "onnxruntime", "openvino")
# what each candidate runs: (the cached export it needs, the runtime that runs it); OpenVINO runs the ONNX export
AUTO_RUNS = {"torch": (None, None), "onnxruntime": ("onnx", "onnx"), "openvino": ("onnx", "openvino")}


def choose(medians: dict[str, float]) -> str:
    """The fastest candidate; a tie goes to the earlier one in AUTO_CANDIDATES (eager first: nothing to load)."""
    order = [b for b in AUTO_CANDIDATES if b in medians]
    return min(order, key=lambda b: (medians[b], order.index(b)))


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def auto_backend(model: Path, unet: Path | None, vae: Path | None, dtype: str, threads: int | None,
                 runs: int = 7) -> tuple[str, dict]:
    """`--backend auto` on the CPU -> (backend, the measurement it rests on). `dtype`: the eager dtype already
    resolved (fp32 / bf16); the runtimes run fp32. Measured once per (model weights, dtype, threads, CPU), then
    read back."""
    import json

    import torch

    from ..io import write_json_atomic

    if not runtime_installed("onnx"):
        return "torch", {"why": "onnxruntime is not installed (pip install 'pocketdiff[export]')"}
    runtimes = [b for b in AUTO_CANDIDATES[1:] if runtime_installed(AUTO_RUNS[b][1])]
    threads = threads or torch.get_num_threads()
    name = f"{Path(model).resolve().name}-onnx-{_key(Path(model), unet, vae, 'onnx')}"
    key = f"{name}|{dtype}|threads={threads}|{_cpu_name()}|{','.join(['torch', *runtimes])}"
    book = cache_root() / "auto_backend.json"
    known = json.loads(book.read_text()) if book.is_file() else {}
    if key not in known:
        try:
            exported = cached_export(model, "onnx", unet, vae, threads)
        except Exception as e:  # a model the exporter cannot take (or that fails parity) still runs, in eager PyTorch
            known[key] = {"backend": "torch", "why": f"the ONNX export failed: {type(e).__name__}: {e}"[:500]}
        else:
            known[key] = _measure_unet_step(model, unet, vae, dtype, threads, exported, runtimes, runs)
        write_json_atomic(book, known)
    return known[key]["backend"], known[key]


def _measure_unet_step(model: Path, unet: Path | None, vae: Path | None, dtype: str, threads: int,
                       exported: Path, runtimes: list[str], runs: int) -> dict:
    import statistics

    import torch

    from ..precision import to_dtype
    from ..profiling.latency import round_robin
    from ..sampling.pipeline import load_pipeline
    from .common import read_manifest
    from .networks import Shapes, example_inputs
    from .runtimes import load_runner

    torch.set_num_threads(threads)
    pipe = load_pipeline(model, unet_dir=unet, vae_dir=vae, dtype=dtype)
    args = example_inputs(Shapes.of(pipe), 2, vocab=int(pipe.text_encoder.config.vocab_size))["unet"]
    eager_args = [a.to(to_dtype(dtype)) if i != 1 else a for i, a in enumerate(args)]
    files = read_manifest(exported)["networks"]["unet"]["files"]
    arrays = [a.numpy() for a in args]

    def eager():
        with torch.inference_mode():
            pipe.unet(*eager_args[:2], encoder_hidden_states=eager_args[2])

    tasks = {"torch": eager}
    for b in runtimes:
        tasks[b] = (lambda r: lambda: r(*arrays))(load_runner(AUTO_RUNS[b][1], files, exported, threads))
    times = round_robin(tasks, runs=runs, warmup=2)
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {"backend": choose(medians), "unet_step_ms": medians, "eager_dtype": dtype,
            "threads": threads, "cpu": _cpu_name(), "runs": runs, "export": str(exported)}
