import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-c", "from pocketdiff.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600)


def test_generate_writes_png_and_is_deterministic(quick_model_dir, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        r = run("generate", "a red circle left of a blue square", "--model", str(quick_model_dir), "--steps", "2",
                "--seed", "3", "-o", str(out))
        assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_generate_defaults_to_the_rows_marked_default(quick_model_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for c in quick_model_dir.iterdir():
        (model / c.name).symlink_to(c)
    (model / "demo.json").write_text(json.dumps([
        {"name": "teacher", "steps": 50, "guidance": 2.0},
        {"name": "fast", "steps": 1, "guidance": 1.0, "unet": "unet", "default": True}]))
    r = run("generate", "a red circle", "--model", str(model), "-o", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("fast: 1 ddim steps, w 1;") and "(1 calls)" in r.stdout
    r = run("generate", "a red circle", "--model", str(model), "--steps", "2", "--guidance", "3",
            "-o", str(tmp_path / "b.png"))
    assert "fast: 2 ddim steps, w 3;" in r.stdout and "(2 calls)" in r.stdout  # what is given wins


def test_generate_bad_input_exits_2_without_traceback(tmp_path):
    r = run("generate", "a red circle", "--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = run("generate", "--model", str(tmp_path))
    assert r.returncode == 2 and "prompt" in r.stderr


def test_generate_bad_device_exits_2(quick_model_dir, tmp_path):
    import torch

    r = run("generate", "a red circle", "--model", str(quick_model_dir), "--device", "gpu0", "-o", str(tmp_path / "a.png"))
    assert r.returncode == 2 and "--device 'gpu0'" in r.stderr and "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = run("generate", "a red circle", "--model", str(quick_model_dir), "--device", "cuda", "-o", str(tmp_path / "a.png"))
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and not (tmp_path / "a.png").exists()


def test_eval_json_and_saved_images(quick_model_dir, tmp_path):
    out, imgs = tmp_path / "e.json", tmp_path / "imgs"
    r = run("eval", "--model", str(quick_model_dir), "--prompts", "heldout-two", "--steps", "2", "--limit", "6",
            "--guidance", "1,3", "--json", str(out), "--save-images", str(imgs))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert len(data["results"]) == 2
    assert data["model"] == str(quick_model_dir) and data["unet"] is None  # which weights were judged
    for key in ("accuracy", "per_attribute", "fid", "clip_score"):
        assert key in data["results"][0]
    for r in data["results"]:  # the novel-pair / seen-pair split partitions the prompts
        sub = r["subsets"]
        assert sum(v["n"] for v in sub.values()) == 6
        assert sum(v["n"] * v["accuracy"] for v in sub.values()) == pytest.approx(6 * r["accuracy"])
        # one verdict per prompt, for paired comparisons (scripts/compare_evals.py)
        assert r["seed"] == 0 and len(r["correct"]) == 6 and np.mean(r["correct"]) == pytest.approx(r["accuracy"])
    index = json.loads((imgs / "heldout-two_w3" / "index.json").read_text())
    assert len(index) == 6 and all("prompt" in v and "seed" in v for v in index.values())


def test_demo_report_and_json(quick_model_dir, tmp_path):
    out, js = tmp_path / "demo", tmp_path / "demo.json"
    r = run("demo", "--model", str(quick_model_dir), "--n", "2", "--out", str(out), "--json", str(js))
    assert r.returncode == 0, r.stderr
    data = json.loads(js.read_text())
    row = data["models"][0]
    assert row["name"] == "teacher" and row["steps"] == 50
    assert set(row["latency_ms"]) == {"text_encoder", "unet_total", "decoder", "total"}
    assert (out / "report.md").read_text().count("![") == 2


def test_compare_evals_pools_seed_sets_and_pairs_verdicts(tmp_path):
    """scripts/compare_evals.py: accuracy pooled over seed files; the change against the reference is paired per
    image where verdicts are present, and falls back to independent accuracies (FILE:SEED) where they are not."""
    from pathlib import Path

    def result(seed, correct, w=2.0, verdicts=True):
        r = {"prompt_set": "heldout-two", "guidance": w, "n": len(correct), "accuracy": float(np.mean(correct)),
             "fid": 10.0 + seed / 1000}
        return {**r, "seed": seed, "correct": correct} if verdicts else r

    files = {}
    for name, seed, correct in [("ref0", 0, [1, 1, 0, 0]), ("ref1", 1000, [1, 0, 0, 0]),
                                ("new0", 0, [1, 1, 1, 0]), ("new1", 1000, [1, 0, 1, 0])]:
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"results": [result(seed, correct)]}))
    old = tmp_path / "old.json"  # written before results carried their seed and verdicts
    old.write_text(json.dumps({"results": [result(1000, [1, 0, 1, 0], verdicts=False)]}))
    script = Path(__file__).resolve().parents[2] / "scripts" / "compare_evals.py"
    out = tmp_path / "cmp.json"
    r = subprocess.run([sys.executable, str(script), "--ref", f"t@2={files['ref0']},{files['ref1']}",
                        "--model", f"s={files['new0']},{files['new1']}", "--model", f"o={files['new0']},{old}:1000",
                        "--json", str(out), "--plot", str(tmp_path / "cmp.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(out.read_text())["rows"]}
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert rows["t"]["accuracy"] == pytest.approx(3 / 8) and rows["t"]["fid_mean"] == pytest.approx(10.5)
    s = rows["s"]
    assert s["accuracy"] == pytest.approx(5 / 8) and s["vs_ref"]["paired"]
    assert s["vs_ref"]["change"] == pytest.approx(2 / 8) and (s["vs_ref"]["gained"], s["vs_ref"]["lost"]) == (2, 0)
    # paired differences [0,0,1,0,0,0,1,0]: sd = sqrt(2 * 0.75^2 + 6 * 0.25^2) / sqrt(7)
    half = 1.96 * np.sqrt((2 * 0.75**2 + 6 * 0.25**2) / 7) / np.sqrt(8)
    assert s["vs_ref"]["change_ci95"] == pytest.approx([0.25 - half, 0.25 + half])
    assert rows["o"]["accuracy"] == pytest.approx(5 / 8) and not rows["o"]["vs_ref"]["paired"]
    bad = subprocess.run([sys.executable, str(script), "--ref", f"t={files['ref0']}", "--model", f"s={files['new0']}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "guidance" in bad.stderr


def test_plot_ablations_draws_the_columns_it_has(tmp_path):
    """scripts/plot_ablations.py: a column per ablation with two of its variants present; a PNG from pooled rows."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "plot_ablations.py"
    sys.path.insert(0, str(script.parent))
    try:
        from plot_ablations import columns
    finally:
        sys.path.pop(0)
    assert [t for t, _ in columns({"base", "p0", "ddim8"})] == ["CFG loss probability p"]
    assert [len(v) for _, v in columns({"base", "p0", "p1", "t16", "prog"})] == [3, 2, 2]
    rows = [{"model": m, "prompt_set": ps, "guidance": w, "accuracy": 0.5 + w / 10, "fid_mean": 30 - w}
            for m in ("base", "p0", "ddim8") for ps in ("heldout-single", "heldout-two") for w in (1.5, 2.0)]
    src, png = tmp_path / "rows.json", tmp_path / "abl.png"
    src.write_text(json.dumps({"rows": rows}))
    r = subprocess.run([sys.executable, str(script), str(src), "--out", str(png)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 0
    src.write_text(json.dumps({"rows": [row for row in rows if row["model"] != "p0"]}))
    bad = subprocess.run([sys.executable, str(script), str(src), "--out", str(png)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "no ablation" in bad.stderr


def test_auto_dtype_follows_the_demo_rows(quick_model_dir, tmp_path):
    """--dtype auto: bf16 only where the CPU has it natively and every demo.json row with that UNet + VAE passed
    the bf16 quality gate (auto_dtype); fp32 otherwise, and on an unlisted UNet."""
    from pocketdiff.evaluation.demo import auto_dtype, resolve_model_dtype
    from pocketdiff.precision import resolve_dtype

    model = tmp_path / "model"
    model.mkdir()
    for c in quick_model_dir.iterdir():
        (model / c.name).symlink_to(c)
    rows = [{"name": "teacher-50", "steps": 50, "guidance": 2.0},
            {"name": "teacher-8", "steps": 8, "guidance": 2.0, "auto_dtype": "bf16"},
            {"name": "fast", "steps": 1, "guidance": 1.0, "unet": "unet", "vae": "vae", "auto_dtype": "bf16",
             "default": True}]
    (model / "demo.json").write_text(json.dumps(rows))
    assert auto_dtype(model) == "fp32"  # teacher-50 shares the teacher's networks and was not gated
    assert auto_dtype(model, model / "unet", model / "vae") == "bf16"
    assert auto_dtype(model, model / "unet") == "fp32"  # no row with this UNet and the default VAE
    assert resolve_model_dtype("auto", model) == "fp32"
    assert resolve_model_dtype("auto", model, model / "unet", model / "vae") == resolve_dtype("auto")
    assert resolve_model_dtype("bf16", model) == "bf16"
    r = run("generate", "a red circle", "--model", str(model), "--dtype", "bf16", "-o", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    assert "; bf16; wrote" in r.stdout
    r = run("generate", "a red circle", "--model", str(model), "--dtype", "fp16", "-o", str(tmp_path / "b.png"))
    assert r.returncode == 2 and "--dtype" in r.stderr and "Traceback" not in r.stderr
