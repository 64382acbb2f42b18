"""Per format: write one network to disk with the runtime's own tools, and run a written network.

- onnx: `torch.onnx.export(dynamo=True, opset_version=18)`, run by onnxruntime with all graph optimisations on;
  batch is a dynamic axis (one file serves the CFG batch of 2, batch 1 and the evaluator's larger batches).
- openvino: converted from that ONNX graph by `openvino.convert_model` and saved as IR (.xml/.bin); run by
  `openvino.Core().compile_model(..., "CPU")`; dynamic batch as in ONNX.
- executorch: `torch.export` -> `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` -> `.pte`, run by
  executorch's Python runtime (the same program an Android/iOS app would load); static shapes, so one program per
  batch size (the UNet at 2 and 1, the others at 1) and larger batches run in chunks.

Every runner takes and returns numpy arrays (float32 unless the graph says otherwise).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

INPUT_NAMES = {"text_encoder": ["input_ids"], "unet": ["sample", "timestep", "encoder_hidden_states"],
               "decoder": ["latents"]}
OUTPUT_NAMES = {"text_encoder": ["last_hidden_state"], "unet": ["out_sample"], "decoder": ["image"]}


@contextlib.contextmanager
def _quiet():
    """The exporters print pages of progress and warnings; keep the CLI's output readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.disable(level)


@contextlib.contextmanager
def _quiet_native():
    """ExecuTorch's native runtime logs CPU probing to the process's stderr (file descriptor 2) when it loads."""
    import sys

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ---------------------------------------------------------------------------------------------------------- ONNX
def export_onnx(net: torch.nn.Module, name: str, args: tuple, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = tuple({0: batch} for _ in args)
    with _quiet(), torch.no_grad():
        prog = torch.onnx.export(net.eval(), args, dynamo=True, opset_version=18, input_names=INPUT_NAMES[name],
                                 output_names=OUTPUT_NAMES[name], dynamic_shapes=dynamic, optimize=True,
                                 verbose=False)
        big = sum(p.numel() * p.element_size() for p in net.parameters()) > 1.8e9  # protobuf's 2 GB limit
        prog.save(str(path), external_data=big)


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxRunner:
    def __init__(self, files: dict[str, str], root: Path, threads: int | None = None):
        self.session = onnx_session(root / files["any"], threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.inputs, arrays)))[0]


# ---------------------------------------------------------------------------------------------------------- OpenVINO
def export_openvino(onnx_path: Path, path: Path, compress_to_fp16: bool = False, model=None) -> None:
    import openvino as ov

    with _quiet():
        model = model if model is not None else ov.convert_model(str(onnx_path))
        ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)


class OpenVinoRunner:
    def __init__(self, files: dict[str, str], root: Path, threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                  # f32 inference: without it OpenVINO may pick bf16 on CPUs that have it, and parity would be lost
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(root / files["any"])), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        result = self.request.infer(list(arrays))
        return np.asarray(result[self.compiled.output(0)])


# ---------------------------------------------------------------------------------------------------------- ExecuTorch
def lower_executorch(exported, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _quiet():
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
        tmp = path.with_suffix(".pte.part")
        tmp.write_bytes(program.buffer)
        tmp.replace(path)


def export_executorch(net: torch.nn.Module, args: tuple, path: Path) -> None:
    with _quiet(), torch.no_grad():
        exported = torch.export.export(net.eval(), args)
    lower_executorch(exported, path)


class ExecuTorchRunner:
    """One loaded program per exported batch size; a batch is cut into the largest chunks that have a program."""

    def __init__(self, files: dict[str, str], root: Path, threads: int | None = None):
        with _quiet_native():
            from executorch.runtime import Runtime

            runtime = Runtime.get()
            self.methods = {int(b): runtime.load_program(root / f).load_method("forward") for b, f in files.items()}
        self.sizes = sorted(self.methods, reverse=True)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        n, outs, i = arrays[0].shape[0], [], 0
        while i < n:
            b = next(s for s in self.sizes if s <= n - i)
            chunk = [torch.from_numpy(np.ascontiguousarray(a[i:i + b])) for a in arrays]
            outs.append(self.methods[b].execute(chunk)[0].numpy().copy())
            i += b
        return np.concatenate(outs)


RUNNERS = {"onnx": OnnxRunner, "openvino": OpenVinoRunner, "executorch": ExecuTorchRunner}


def load_runner(fmt: str, files: dict[str, str], root: Path, threads: int | None = None):
    return RUNNERS[fmt](files, root, threads)


def file_size(root: Path, files: Sequence[str]) -> int:
    """Bytes on disk of a network: its files plus what they reference beside them (ONNX external data, IR .bin)."""
    total = 0
    for f in files:
        p = root / f
        total += p.stat().st_size
        for extra in (p.with_suffix(".bin"), Path(str(p) + ".data"), p.with_suffix(".onnx.data")):
            if extra != p and extra.is_file() and extra.suffix != p.suffix:
                total += extra.stat().st_size
    return total


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
