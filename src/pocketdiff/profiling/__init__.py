"""Profiling: FLOPs and params per block (meta device), in-place per-block latency (torch or onnxruntime), the
latency lookup table and `predict_latency` that SnapFusion's architecture evolving consumes, and plots."""

from .flops import CONTEXT_LEN, ArchCost, Unit, UnitCost, analyze, count_flops, units
from .latency import ModelProfile, Timing, machine_info, profile_model
from .lut import LutError, block_latencies, build_lut, load_lut, overhead_signature, predict_latency

__all__ = [
    "CONTEXT_LEN", "ArchCost", "Unit", "UnitCost", "analyze", "count_flops", "units", "ModelProfile", "Timing",
    "machine_info", "profile_model", "LutError", "block_latencies", "build_lut", "load_lut", "overhead_signature",
    "predict_latency",
]
