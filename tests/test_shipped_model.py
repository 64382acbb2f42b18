"""The model shipped in models/shapes/: complete, small, and it runs (its quality is measured in docs/shapes-world.md)."""

from pathlib import Path

import numpy as np
import pytest

MODEL = Path(__file__).resolve().parents[1] / "models" / "shapes"
pytestmark = pytest.mark.skipif(not (MODEL / "unet").is_dir(), reason="no shipped shapes-world model")


def test_shipped_weights_are_small_safetensors():
    files = list(MODEL.rglob("*"))
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert weights and not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert sum(f.stat().st_size for f in files if f.is_file()) <= 60 * 2**20


def test_models_dir_stays_under_60_mb():
    """All of models/ (the wheel carries models/shapes; git keeps every committed version): at most 60 MB."""
    files = [f for f in MODEL.parent.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    assert files and size <= 60 * 2**20, f"models/ holds {size / 2**20:.1f} MB (limit 60 MB)"


def test_shipped_pipeline_generates_deterministically():
    from pocketdiff.sampling.pipeline import load_pipeline

    pipe = load_pipeline(MODEL)
    a = pipe(["a red circle on the left", "a blue square above a yellow triangle"], num_inference_steps=4,
             guidance_scale=3.0, seed=0).images
    b = pipe(["a red circle on the left", "a blue square above a yellow triangle"], num_inference_steps=4,
             guidance_scale=3.0, seed=0).images
    assert a.shape == (2, 64, 64, 3) and np.array_equal(a, b)


def test_demo_rows_name_shipped_components_and_one_default():
    from pocketdiff.evaluation.demo import default_variant, demo_variants

    rows = demo_variants(MODEL)
    for r in rows:
        for k in ("unet", "vae"):
            if r.get(k):
                assert (r[k] / "config.json").is_file(), r
    assert sum(bool(r.get("default")) for r in rows) == 1
    assert default_variant(MODEL)["steps"] < 50  # generate's default is a few-step sampler (docs/distillation.md)


def test_bf16_by_default_only_where_the_quality_gate_passed():
    """A demo.json row may let --dtype auto pick bf16 only with a bf16-vs-fp32 comparison on file whose paired
    change is within 0.5 points on both held-out sets (docs/results/fast-path/, scripts/compare_evals.py)."""
    import json

    from pocketdiff.evaluation.demo import demo_variants

    results = MODEL.parents[1] / "docs" / "results" / "fast-path"
    for r in demo_variants(MODEL):
        if r.get("auto_dtype", "fp32") == "fp32":
            continue
        assert r["auto_dtype"] == "bf16", r
        gate = json.loads((results / f"{r['gate']}.json").read_text())
        rows = [x for x in gate["rows"] if "vs_ref" in x]
        assert {x["prompt_set"] for x in rows} == {"heldout-single", "heldout-two"}, r
        for x in rows:
            assert len(x["vs_ref"]["seeds"]) >= 3 and x["vs_ref"]["paired"], r
            assert abs(x["vs_ref"]["change"]) <= 0.005 + 1e-9, (r["name"], x["prompt_set"], x["vs_ref"]["change"])
