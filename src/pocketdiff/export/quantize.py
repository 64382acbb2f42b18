"""Post-training quantization of the UNet, each runtime with its own quantizer.

- `int8` (weights and activations, static): calibrated on the UNet's real inputs along sampling trajectories of
  training-split prompts (`networks.record_unet_inputs`: every step of every trajectory, so every noise level's
  activation range is seen: timestep-aware calibration, Q-Diffusion / PTQ4DM).
  onnx: onnxruntime's `quantize_static` (QDQ format, per-channel int8 weights, int8 activations, MinMax);
  openvino: `nncf.quantize` (model_type TRANSFORMER: the attention-aware scheme);
  executorch: the XNNPACK pt2e quantizer (`prepare_pt2e` / `convert_pt2e`, symmetric per-channel).
- `int8-weights`: int8 weights, no calibration. openvino: `nncf.compress_weights` (weight-only, INT8_ASYM);
  onnx: `quantize_dynamic` and executorch: the XNNPACK quantizer's dynamic config (these two runtimes' int8-weight
  paths quantize activations on the fly from each call's own range: nothing is calibrated).
- `fp16`: fp16 weights. onnx: onnxruntime's float16 converter (fp32 inputs/outputs kept); openvino: IR compressed to
  fp16 (CPU computes in fp32); executorch: the UNet in half precision with fp32 inputs/outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .runtimes import _quiet, export_openvino, lower_executorch

Calib = Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _as_numpy(calib: Calib) -> list[list[np.ndarray]]:
    return [[t.numpy().astype(np.float32) for t in item] for item in calib]


# ---------------------------------------------------------------------------------------------------------- ONNX
def onnx_quantize(src: Path, dst: Path, mode: str, calib: Calib | None) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with _quiet():
            model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
        return
    pre = dst.with_name(dst.stem + ".pre.onnx")
    with _quiet():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        if mode == "int8-weights":
            with _quiet():
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True)
            return
        names = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]
        items = _as_numpy(calib)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(items)

            def get_next(self):
                item = next(self.it, None)
                return None if item is None else dict(zip(names, item))

        with _quiet():
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        pre.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------- OpenVINO
def openvino_quantize(src_onnx: Path, dst: Path, mode: str, calib: Calib | None) -> None:
    import nncf
    import openvino as ov

    if mode == "fp16":
        export_openvino(src_onnx, dst, compress_to_fp16=True)
        return
    model = ov.convert_model(str(src_onnx))
    with _quiet():
        if mode == "int8-weights":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            items = _as_numpy(calib)
            names = [i.get_any_name() for i in model.inputs]
            model = nncf.quantize(model, nncf.Dataset(items, lambda item: dict(zip(names, item))),
                                  subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER)
    export_openvino(src_onnx, dst, model=model)


# ---------------------------------------------------------------------------------------------------------- ExecuTorch
class _HalfIO(torch.nn.Module):
    """A half-precision network behind fp32 inputs and outputs (the runners speak fp32)."""

    def __init__(self, net):
        super().__init__()
        self.net = net.half()

    def forward(self, *args):
        return self.net(*[a.half() if a.is_floating_point() else a for a in args]).float()


def executorch_quantize(net: torch.nn.Module, args: tuple, dst: Path, mode: str, calib: Calib | None) -> None:
    import copy

    if mode == "fp16":
        with _quiet(), torch.no_grad():
            exported = torch.export.export(_HalfIO(copy.deepcopy(net)).eval(), args)
        lower_executorch(exported, dst)
        return
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, \
        get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=mode == "int8-weights"))
    with _quiet(), torch.no_grad():
        graph = torch.export.export(copy.deepcopy(net).eval(), args).module()
        prepared = prepare_pt2e(graph, quantizer)
        batch = args[0].shape[0]
        for item in (calib or [args]) if mode == "int8" else [args]:
            if item[0].shape[0] == batch:
                prepared(*item)
            elif batch == 1:  # the batch-1 program: the same inputs row by row
                for r in range(item[0].shape[0]):
                    prepared(*(a[r:r + 1] for a in item))
        converted = convert_pt2e(prepared)
        exported = torch.export.export(converted, args)
    lower_executorch(exported, dst)
