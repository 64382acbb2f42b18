"""Deployment: export a pipeline's three networks (text encoder, UNet, decoder) to ONNX Runtime, OpenVINO or
ExecuTorch/XNNPACK, optionally with the UNet quantized (fp16, int8 weights, int8 weights and activations), and run the
exported directory with the same sampling loop (`load_exported_pipeline`)."""

from .common import FORMATS, QUANTIZE, ExportError, ParityError, is_export_dir, read_manifest
from .exporter import export_model
from .pipeline import load_exported_pipeline

__all__ = ["FORMATS", "QUANTIZE", "ExportError", "ParityError", "export_model", "is_export_dir",
           "load_exported_pipeline", "read_manifest"]
