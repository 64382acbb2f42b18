"""Post-training quantization of the UNet, each runtime with its own quantizer.

- `int8` (weights and activations, static): calibrated on the UNet's real inputs along sampling trajectories of
  training-split prompts (`networks.record_unet_inputs`: every step of every trajectory, so every noise level's
  activation range is seen: timestep-aware calibration, Q-Diffusion / PTQ4DM).
  onnx: onnxruntime's `quantize_static` (QDQ format, per-channel int8 weights, int8 activations, MinMax) of the
  convolutions and matrix products only (ONNX_INT8_OPS);
  openvino: `nncf.quantize` (model_type TRANSFORMER: the attention-aware scheme);
  executorch: the XNNPACK pt2e quantizer (`prepare_pt2e` / `convert_pt2e`, symmetric per-channel), convolutions
  and linear layers only.
- `int8-hybrid` (openvino): OpenVINO's recipe for SD (`_openvino_hybrid`); the text encoder and decoder int8
  weight-only.
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
# int8 (static) quantizes only the compute: convolutions and matrix products. With every op type (the default), the
# elementwise ops of the timestep embedding get int8 too (t * frequencies spans 0..~1000: one int8 step is ~8 radians,
# so sin/cos become noise): on the shipped UNet the output's relative RMS error was ~1.0 at the first, high-noise
# steps and 0.29 on average over 32 calibration inputs, against 0.05 and 0.066 with these ops only.
ONNX_INT8_OPS = ["Conv", "MatMul", "Gemm"]
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
        model = onnx.load(str(pre))
        _suffix_initializers(model)
        onnx.save(model, str(pre))
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
                            op_types_to_quantize=ONNX_INT8_OPS,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        pre.unlink(missing_ok=True)


def _suffix_initializers(model, suffix: str = "_const") -> None:
    """Rename initializers whose names end in a digit (the dynamo exporter's `val_57`).

    onnxruntime's QDQ quantizer gives a bias that several nodes share (GroupNorm's constant InstanceNormalization
    scale/bias) one copy per node named `<name><n>`: `val_57` + `9` = `val_579`, which on the shipped UNet is already
    a Slice output, and the quantized graph does not load ("Duplicate definition of name (val_579)").
    With a non-digit suffix the copies (`val_57_const1`, ...) cannot meet an exporter name."""
    names = {i.name: i.name + suffix for i in model.graph.initializer if i.name[-1:].isdigit()}
    for init in model.graph.initializer:
        init.name = names.get(init.name, init.name)
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in names:
                node.input[k] = names[name]
    for info in model.graph.value_info:
        info.name = names.get(info.name, info.name)


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
        elif mode == "int8-hybrid":
            model = _openvino_hybrid(model, calib)
        else:
            items = _as_numpy(calib)
            names = [i.get_any_name() for i in model.inputs]
            model = nncf.quantize(model, nncf.Dataset(items, lambda item: dict(zip(names, item))),
                                  subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER)
    export_openvino(src_onnx, dst, model=model)


def _weighted_matmuls(model) -> list[str]:
    """Names of the MatMuls whose second input is a constant (Linear layers), through Convert/Transpose/Reshape."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Convert", "Transpose", "Reshape", "Unsqueeze"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            names.append(op.get_friendly_name())
    return names


def _openvino_hybrid(model, calib: Calib):
    """OpenVINO's hybrid recipe for SD UNets (optimum-intel's `_hybrid_quantization`): the Linear layers' weights
    int8 weight-only (`nncf.compress_weights`), the convolutions and the activation-by-activation MatMuls (attention
    scores, attention-weighted values) int8 in weights and activations (`nncf.quantize`, TRANSFORMER, SmoothQuant
    off), with those weight-only Linear layers in the ignored scope."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    linear = _weighted_matmuls(model)
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                  ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    items = _as_numpy(calib)
    names = [i.get_any_name() for i in model.inputs]
    return nncf.quantize(model, nncf.Dataset(items, lambda item: dict(zip(names, item))), subset_size=len(items),
                         model_type=nncf.ModelType.TRANSFORMER,
                         ignored_scope=nncf.IgnoredScope(names=linear, validate=False),
                         advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alpha=-1))


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
    if mode == "int8":  # the compute only, as for onnx (ONNX_INT8_OPS): not the timestep embedding's add/mul
        # (the filter sees every node of a matched pattern, weights included: so it rejects, not selects)
        aten = torch.ops.aten
        elementwise = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor, aten.cat.default}
        quantizer.set_filter_function(lambda node: node.target not in elementwise)
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
