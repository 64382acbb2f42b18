"""Interrupted training: a quick run SIGKILLed at 14 points (during imports, inside a half-written checkpoint,
between and after the checkpoint's two renames, in a torn log line, during evaluation, during export and its
publishing swap), most of them several kills in one run, resumes to weights, logs and an export bit-identical to an
uninterrupted run. After every kill the export path holds a complete export (the old one or the new one), never
nothing and never half of one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("kill_driver.py")
SRC = Path(__file__).resolve().parents[2] / "src"

# each run: the kill points hit one after another (each invocation resumes the previous one's run directory)
RUNS = {
    "imports-and-checkpoints": ["import-start:1", "import-torch:1", "ckpt-torn:3", "ckpt-before-state:2",
                                "ckpt-between-renames:2", "ckpt-after-renames:1"],
    "eval-log-export": ["batch:3", "eval:1", "log-torn:4", "eval:2", "export-half:1"],
    "publish-over-an-old-export": ["ckpt-torn:1", "publish-before:1", "publish-after:1"],
}


def _run(run_dir: Path, export: Path, point: str) -> int:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, str(DRIVER), str(run_dir), str(export), point], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, -signal.SIGKILL), r.stderr[-2000:]
    return r.returncode


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(r) for r in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _export_ok(export: Path, allowed: list[dict]) -> bool:
    """A complete export (both files) equal to one of the allowed contents."""
    if not (export / "config.json").is_file() or not (export / "model.safetensors").is_file():
        return False
    return any(_same(_tensors(export / "model.safetensors"), a) for a in allowed)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    assert _run(root / "run", root / "export", "none") == 0
    return root


@pytest.mark.parametrize("name", list(RUNS))
def test_sigkill_and_resume_is_bit_identical(name, reference, tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    ref_export = _tensors(reference / "export" / "model.safetensors")
    allowed = [ref_export]
    if name == "publish-over-an-old-export":  # an older export is there: a kill must leave it or the new one
        old = {k: v + 1 for k, v in ref_export.items()}
        export.mkdir()
        from safetensors.torch import save_file

        save_file(old, str(export / "model.safetensors"))
        (export / "config.json").write_text("{}\n")
        allowed.append(old)
    for point in RUNS[name]:
        assert _run(run, export, point) == -signal.SIGKILL, f"{point} was never reached"
        if export.exists() or name == "publish-over-an-old-export":
            assert _export_ok(export, allowed), f"after a kill at {point} the export path is empty or half-written"
    assert _run(run, export, "none") == 0
    for f in ("model.safetensors", "ema.safetensors"):
        assert _same(_tensors(run / "checkpoint" / f), _tensors(reference / "run" / "checkpoint" / f)), f
    assert _same(_tensors(export / "model.safetensors"), ref_export)
    assert _losses(run) == _losses(reference / "run")  # no lost, repeated or torn rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]  # no *.tmp / *.old left
    assert not {"ckpt.tmp", "checkpoint.old"} & {p.name for p in run.iterdir()}


def test_at_least_10_kill_points():
    assert sum(len(v) for v in RUNS.values()) >= 10
