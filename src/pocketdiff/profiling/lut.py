"""The latency lookup table (SnapFusion's Algorithm 1 needs dLatency of every block at every stage) and the predictor.

    {"version", "backend", "resolution", "context_len", "threads", "machine": {"cpu", "cores"}, "date",
     "torch_version", "runs", "warmup",
     "entries":  {block_signature: {"ms_median", "ms_min", "ms_max", "params", "macs", "kind", "level",
                                    "resolution", "count", "models"}},
     "overhead": {overhead_signature: {"ms_median", "ms_min", "ms_max", "params", "macs", "method", "models"}},
     "unet_ms":  {model: {"ms_median", "ms_min", "ms_max", "predicted_ms"}}}

Entries are keyed by `pocketdiff.arch.block_signature` (kind + options, input and output widths, latent resolution,
text context 77 x dim for cross-attention blocks). A signature met several times (in one UNet or across the profiled
models) gets one entry: the median over all its measurements. The *overhead* of a UNet is what is not a block: stem
(time MLP + conv_in), samplers and head; it depends on the channels and the resolution only, so it is keyed by
`overhead_signature(spec, latent)`. With the torch backend it is measured in place by hooks; with onnxruntime (blocks
timed as separate graphs) it is the whole UNet's median minus the blocks' (method "residual", clamped at 0).

`predict_latency(spec, lut)` = sum of the entries of the spec's blocks + its overhead entry. `unet_ms[...]
["predicted_ms"]` records how close that sum is to the whole UNet timed without hooks: within a few % for torch
tables (SD-1.5 at 512px: 26.3 vs 27.1 s); onnxruntime tables over-predict (blocks exported one by one lose the whole
graph's fusion and memory planning: 28.0 vs 19.7 s), so use them to rank blocks, not to predict totals.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..arch.spec import ArchSpec
from ..errors import PocketDiffError
from .flops import CONTEXT_LEN, iter_block_units, latent_size

LUT_VERSION = 1


class LutError(PocketDiffError, KeyError):
    """A lookup table that lacks an entry the spec needs, or a file that is not a lookup table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def overhead_signature(spec: ArchSpec, latent: int) -> str:
    """Key of a UNet's non-block parts (stem, samplers, head): they depend on widths, levels and resolution only."""
    return (f"overhead|channels={','.join(map(str, spec.channels))}|in={spec.in_channels}|out={spec.out_channels}"
            f"|temb={spec.temb_dim}|res={latent}")


def _stats(times_ms: list[float]) -> dict:
    return {"ms_median": statistics.median(times_ms), "ms_min": min(times_ms), "ms_max": max(times_ms),
            "n": len(times_ms)}


def build_lut(profiles, machine: dict, date: str, torch_version: str) -> dict:
    """A lookup table from `latency.ModelProfile`s of one backend, resolution and thread count."""
    if not profiles:
        raise LutError("no profiles to build a lookup table from")
    first = profiles[0]
    for p in profiles[1:]:
        if (p.backend, p.resolution, p.threads) != (first.backend, first.resolution, first.threads):
            raise LutError("profiles for one lookup table must share backend, resolution and threads")
    pooled: dict[str, dict] = {}
    for p in profiles:
        for row in p.units:
            u = row.cost.unit
            if not u.is_block:
                continue
            e = pooled.setdefault(u.signature, dict(
                times=[], seen=set(), params=row.cost.params, macs=row.cost.macs, kind=u.kind, level=u.level,
                resolution=u.resolution, count=0, models=[]))
            if id(row.timing) not in e["seen"]:  # onnxruntime: occurrences of a signature share one measurement
                e["seen"].add(id(row.timing))
                e["times"] += row.timing.times_ms
            e["count"] += 1
            if p.name not in e["models"]:
                e["models"].append(p.name)
    entries = {}
    for sig, e in pooled.items():
        s = _stats(e["times"])
        entries[sig] = {"ms_median": s["ms_median"], "ms_min": s["ms_min"], "ms_max": s["ms_max"], "n": s["n"],
                        **{k: e[k] for k in ("params", "macs", "kind", "level", "resolution", "count", "models")}}

    overhead: dict[str, dict] = {}
    for p in profiles:
        sig = overhead_signature(p.spec, p.latent)
        o = overhead.setdefault(sig, dict(times=[], params=p.overhead_params, macs=p.overhead_macs,
                                          method=p.overhead_method, models=[]))
        o["times"] += p.overhead.times_ms
        o["models"].append(p.name)
    overhead = {sig: {**{k: v for k, v in _stats(o.pop("times")).items()}, **o} for sig, o in overhead.items()}

    lut = {
        "version": LUT_VERSION, "backend": first.backend, "resolution": first.resolution,
        "context_len": CONTEXT_LEN, "threads": first.threads, "machine": machine, "date": date,
        "torch_version": torch_version, "runs": first.runs, "warmup": first.warmup,
        "entries": entries, "overhead": overhead, "unet_ms": {},
    }
    for p in profiles:
        lut["unet_ms"][p.name] = {**{k: v for k, v in p.unet.to_dict().items()},
                                  "predicted_ms": predict_latency(p.spec, lut)}
    return lut


def load_lut(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LutError(f"no lookup table at {path} (write one with `pocketdiff profile NAME --lut {path}`)")
    from ..loading import read_json

    lut = read_json(path, error=LutError)
    for k in ("entries", "overhead", "resolution"):
        if not isinstance(lut, dict) or k not in lut:
            raise LutError(f"{path} is not a latency lookup table (no '{k}')")
    return lut


def block_latencies(spec: ArchSpec, lut: dict, resolution: int | None = None, field: str = "ms_median"
                    ) -> dict[tuple, float]:
    """ms of every block of `spec` from the table, keyed (path, level, index): dLatency of removing that block.
    `field="macs"`: the blocks' multiply-accumulates instead (the FLOPs criterion of the evolving control)."""
    latent = latent_size(spec, resolution or lut["resolution"])
    out, missing = {}, []
    for u in iter_block_units(spec, latent, lut.get("context_len", CONTEXT_LEN)):
        e = lut["entries"].get(u.signature)
        if e is None:
            missing.append(u.signature)
        else:
            out[u.key] = float(e[field])
    if missing:
        raise LutError(f"the lookup table has no entry for {len(missing)} block(s) of {spec.name}, first: "
                       f"{missing[0]}; profile a model with these blocks (`pocketdiff profile ... --lut`)")
    return out


def predict_latency(spec: ArchSpec, lut: dict, resolution: int | None = None) -> float:
    """Predicted ms of one UNet forward: the table's entries for each block of `spec` + its overhead entry."""
    latent = latent_size(spec, resolution or lut["resolution"])
    blocks = sum(block_latencies(spec, lut, latent * 8).values())
    sig = overhead_signature(spec, latent)
    if sig not in lut["overhead"]:
        known = ", ".join(lut["overhead"]) or "none"
        raise LutError(f"the lookup table has no overhead entry for {sig} (it has: {known}); profile a model with "
                       f"these channels at this resolution")
    return blocks + float(lut["overhead"][sig]["ms_median"])


__all__ = ["LutError", "build_lut", "load_lut", "predict_latency", "block_latencies", "overhead_signature",
           "LUT_VERSION"]
