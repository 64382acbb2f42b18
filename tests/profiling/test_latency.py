import pytest

from pocketdiff.arch import ArchSpec, FlexUNet, block_signature, get_spec
from pocketdiff.arch.blocks import ResBlock
from pocketdiff.profiling import LutError, build_lut, machine_info, predict_latency, profile_model
from pocketdiff.profiling.lut import block_latencies, overhead_signature

TINY = dict(width=0.1, cross_attention_dim=24)


@pytest.fixture(scope="module")
def tiny_profile():
    spec = get_spec("sd15", **TINY)
    return profile_model(spec, resolution=64, runs=3, warmup=1, threads=2, components=False)


def signatures_from_model(spec: ArchSpec, latent: int) -> set[str]:
    """Block signatures read off the built modules (not from the profiler's own wiring)."""
    model, blocks = FlexUNet.from_spec(spec), {(p, l, i): b for p, l, i, b in spec.all_blocks()}
    out = set()
    for key, mod in model.named_blocks():
        cin = mod.norm1.num_channels if isinstance(mod, ResBlock) else mod.norm.num_channels
        lvl = key[1]
        out.add(block_signature(blocks[key], spec.channels[lvl], cin, latent // 2**lvl, 77, spec.cross_attention_dim))
    return out


def test_profiler_times_every_block(tiny_profile):
    p = tiny_profile
    blocks = [u for u in p.units if u.cost.unit.is_block]
    assert [u.cost.unit.key for u in blocks] == [(a, b, c) for a, b, c, _ in p.spec.all_blocks()]
    assert all(u.timing.median > 0 and len(u.timing.times_ms) == 3 for u in p.units)
    # how the block timings compare with the whole UNet's is a speed question: benchmarks/sanity_timings.py
    d = p.to_dict()
    assert d["unet"]["ms_median"] > 0 and len(d["blocks"]) == len(p.units) and d["overhead"]["method"] == "hooks"


def test_lut_keys_and_prediction(tiny_profile):
    p = tiny_profile
    lut = build_lut([p], machine_info(), "2026-01-01", "x")
    assert set(lut["entries"]) == signatures_from_model(p.spec, p.latent)
    assert len(lut["entries"]) < sum(1 for _ in p.spec.all_blocks())  # repeated signatures share one entry
    e = next(iter(lut["entries"].values()))
    assert {"ms_median", "ms_min", "ms_max", "params", "macs", "kind", "level", "resolution"} <= set(e)
    ms = predict_latency(p.spec, lut)
    assert ms > 0
    over = lut["overhead"][overhead_signature(p.spec, p.latent)]["ms_median"]
    assert ms == pytest.approx(sum(block_latencies(p.spec, lut).values()) + over)
    assert lut["unet_ms"][p.name]["predicted_ms"] == pytest.approx(ms)
    # a smaller network made of the same blocks is predicted from the same table, and is faster
    smaller = get_spec("sd15", depth=0.5, **TINY)
    assert 0 < predict_latency(smaller, lut) < ms
    with pytest.raises(LutError, match="no entry"):
        predict_latency(get_spec("mobilediffusion", **TINY), lut)


def test_onnxruntime_backend_on_a_tiny_model():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # one level, one transformer and one ResNet: three exports (whole UNet + 2 blocks) keep this test short
    spec = ArchSpec.from_dict(dict(channels=[32], down=[["tf"]], mid=[], up=[["res"]], sample_size=8, norm_groups=8,
                                   cross_attention_dim=24, name="tiny"))
    p = profile_model(spec, resolution=64, backend="onnxruntime", runs=2, warmup=1, threads=1, components=False)
    blocks = [u for u in p.units if u.cost.unit.is_block]
    assert len(blocks) == 2 and all(u.timing.median > 0 for u in blocks)
    assert p.unet.median > 0 and p.overhead_method == "residual" and p.export_s > 0
    lut = build_lut([p], machine_info(), "2026-01-01", "x")
    assert lut["backend"] == "onnxruntime" and set(lut["entries"]) == signatures_from_model(spec, 8)
    assert predict_latency(spec, lut) > 0
