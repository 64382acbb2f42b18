"""`pocketdiff sweep`: guidance sweep -> JSON + FID-vs-accuracy / FID-vs-CLIP plot, one curve per model."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pocketdiff.errors import DataError


def test_sweep_writes_json_and_png(quick_model_dir, tmp_path):
    from pocketdiff.cli import build_app

    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    r = CliRunner().invoke(build_app(), [
        "sweep", "--model", str(quick_model_dir), "--model", f"{quick_model_dir}:unet",
        "--scheduler", "ddim", "--scheduler", "dpm++", "--steps", "2", "--guidance", "1,3",
        "--prompts", "heldout-two", "--limit", "2", "--json", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    data = json.loads(out.read_text())
    assert data["guidance"] == [1.0, 3.0] and [m["scheduler"] for m in data["models"]] == ["ddim", "dpm++"]
    assert data["models"][1]["unet"].endswith("unet")
    for m in data["models"]:
        assert [p["guidance"] for p in m["points"]] == [1.0, 3.0] and all(p["n"] == 2 for p in m["points"])
        assert all(p["fid"] is not None and 0 <= p["accuracy"] <= 1 for p in m["points"])
    assert len(data["table"]) == 2 and {"fid", "clip_score", "accuracy", "steps"} <= set(data["table"][0])
    assert np.asarray(Image.open(png)).ndim == 3


def test_model_specs_and_per_model_counts(tmp_path):
    from pocketdiff.cli.sweep import _per_model, parse_model
    from pocketdiff.evaluation.sweep import table_rows

    (tmp_path / "unet_s8").mkdir()
    assert parse_model(str(tmp_path)) == (tmp_path, None)
    assert parse_model(f"{tmp_path}:unet_s8") == (tmp_path, tmp_path / "unet_s8")
    with pytest.raises(DataError, match="no UNet directory"):
        parse_model(f"{tmp_path}:missing")
    assert _per_model(["ddim"], 3, "--scheduler") == ["ddim"] * 3
    with pytest.raises(DataError, match="one per --model"):
        _per_model(["ddim", "dpm"], 3, "--scheduler")
    pts = [{"prompt_set": "s", "guidance": w, "fid": f, "clip_score": None, "accuracy": a, "latency_ms": {}}
           for w, f, a in ((1.0, 9.0, 0.5), (3.0, 4.0, 0.4), (5.0, 6.0, 0.9))]
    m = [{"label": "x", "steps": 8, "scheduler": "ddim", "points": pts}]
    assert table_rows(m)[0]["guidance"] == 3.0 and table_rows(m, 4.6)[0]["guidance"] == 5.0
