"""The trainer under `accelerate launch` with 2 processes (gloo on the CPU), on a toy stage (tests/training/mp_driver.py):
(a) the weights are identical on both processes, (b) 2 processes x batch B train the weights of 1 process x batch 2B,
(c) a process SIGKILLed mid-run + `--resume` (2 processes) continues exactly, (d) the export is written once, (e) the
summary JSON (`--json`) records the number of processes; (f) the bad examples the data source dropped are summed over
processes (`data_skipped`), (g) weights that drift apart between processes stop the run, and (h) under FSDP2 (forced
on the CPU: `pocketdiff.testing.force_fsdp_on_cpu`) the toy trains the weights of DDP, resumes exactly after a stop,
exports once. Two launches (~20-40 s each on a loaded 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("mp_driver.py")
STEPS, B = 8, 4
BAD = ("--set", "options.bad_every=4")  # the data source drops items: data_skipped > 0

CONFIG = f"""stage: toy
export_dir: unused
max_steps: {STEPS}
batch_size: {B}
lr: 1.0e-2
warmup_steps: 2
ema_decay: 0.9
log_every: 1
checkpoint_every: 2
num_threads: 1
"""


def _launch(*args: str) -> subprocess.CompletedProcess:
    from pocketdiff.testing import free_port

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(DRIVER), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _run_args(root: Path, name: str, *extra: str) -> list[str]:
    return ["train", "toy", "--config", str(root / "toy.yaml"), "--out", str(root / name),
            "--export", str(root / f"export_{name}" / "toy"), "--json", str(root / f"{name}.json"), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    (root / "toy.yaml").write_text(CONFIG)
    # process 1 SIGKILLs itself during step 6 (index 5); the last checkpoint is step 4
    killed = _launch(*_run_args(root, "split", "--set", "options.torch_noise=0.1", "--set", "options.kill_at_step=5",
                                *BAD))
    assert killed.returncode != 0 and not (root / "split.json").exists(), killed.stderr[-3000:]
    assert json.loads((root / "split" / "checkpoint" / "state.json").read_text())["step"] == 4
    done = _launch(*_run_args(root, "split", "--resume", "--set", "options.torch_noise=0.1", *BAD), "--then",
                   *_run_args(root, "full", "--set", "options.torch_noise=0.1", *BAD), "--then",
                   *_run_args(root, "plain", *BAD), "--then",
                   "--may-fail", *_run_args(root, "desync", "--set", "options.desync_at_step=2"), "--then",
                   # FSDP: a SIGTERM on process 1 during step 5 (both stop after it, checkpoint, exit 130), --resume;
                   # and the same run in one go
                   "--may-fail", "--fsdp", *_run_args(root, "fsdp_split", "--set", "options.term_at_step=4", *BAD),
                   "--then", "--fsdp", *_run_args(root, "fsdp_split", "--resume", *BAD),
                   "--then", "--fsdp", *_run_args(root, "fsdp", *BAD),
                   # a checkpoint of either kind resumes under the other
                   "--then", "--may-fail", "--fsdp",
                   *_run_args(root, "fsdp_then_ddp", "--set", "options.term_at_step=4", *BAD),
                   "--then", *_run_args(root, "fsdp_then_ddp", "--resume", *BAD),
                   "--then", "--may-fail", *_run_args(root, "ddp_then_fsdp", "--set", "options.term_at_step=4", *BAD),
                   "--then", "--fsdp", *_run_args(root, "ddp_then_fsdp", "--resume", *BAD))
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "desync.stderr").write_text(done.stderr)
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_weights_are_identical_on_both_processes(runs):
    for name in ("split", "full", "plain"):
        a, b = _weights(runs / name / "weights_rank0.safetensors"), _weights(runs / name / "weights_rank1.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_two_processes_x_b_equal_one_process_x_2b(runs, tmp_path):
    """Same samples (the stream is indexed by the global sample number), gradients averaged by DDP: equal up to the
    order of float additions (measured: max |diff| 3e-8 after 8 AdamW steps; tolerance 1e-5)."""
    from pocketdiff.training.loop import train
    from pocketdiff.training.run import load_config

    from pocketdiff.training.stages import STAGES

    sys.path.insert(0, str(DRIVER.parent))
    try:
        from mp_driver import ToyStage
    finally:
        sys.path.remove(str(DRIVER.parent))
        STAGES.pop("toy", None)  # the driver registers its stage on import; the CLI has no `train toy`
    cfg = load_config(runs / "toy.yaml", overrides={"batch_size": 2 * B, "export_dir": str(tmp_path / "export"),
                                                    "options": {"bad_every": 4}}, options_cls=ToyStage.Options)
    summary = train(ToyStage(cfg), cfg, tmp_path / "one")
    assert summary["num_processes"] == 1 and summary["samples_seen"] == STEPS * 2 * B
    # (f) the bad items each process's data dropped, summed: the count of 1 process reading all the samples
    plain = json.loads((runs / "plain.json").read_text())
    assert summary["data_skipped"] > 0 and plain["data_skipped"] == summary["data_skipped"]
    for f in ("model.safetensors", "ema.safetensors"):
        one, two = _weights(tmp_path / "one" / "checkpoint" / f), _weights(runs / "plain" / "checkpoint" / f)
        assert one.keys() == two.keys()
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
        assert diff <= 1e-5, (f, diff)
    # a different stream would not pass: the noisy run's weights are far from the plain one's
    noisy = _weights(runs / "full" / "checkpoint" / "model.safetensors")
    assert max((noisy[k] - two[k]).abs().max().item() for k in noisy) > 1e-3


def test_sigkill_and_resume_under_two_processes_is_exact(runs):
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        if f.endswith(".safetensors"):
            a, b = _weights(runs / "split" / "checkpoint" / f), _weights(runs / "full" / "checkpoint" / f)
            assert all(torch.equal(a[k], b[k]) for k in a), f
    rng = _weights(runs / "full" / "checkpoint" / "rng.safetensors")
    assert {"torch_cpu", "torch_cpu.1"} <= rng.keys() and not torch.equal(rng["torch_cpu"], rng["torch_cpu.1"])
    rows = [json.loads(r) for r in (runs / "split" / "log.jsonl").read_text().splitlines()]
    full = [json.loads(r) for r in (runs / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in full if "loss" in r]
    skipped = [json.loads((runs / f"{name}.json").read_text())["data_skipped"] for name in ("split", "full")]
    assert skipped[0] == skipped[1] > 0  # the count before the kill was checkpointed and continued


def test_the_export_is_written_once(runs):
    for name in ("split", "full", "plain"):
        assert (runs / f"export_{name}" / "exports.log").read_text() == "0\n", name
        assert (runs / f"export_{name}" / "toy" / "model.safetensors").is_file()


def test_summary_json_records_the_processes(runs):
    s = json.loads((runs / "plain.json").read_text())
    assert s["num_processes"] == 2 and s["global_batch_size"] == 2 * B and s["samples_seen"] == STEPS * 2 * B
    assert s["step"] == STEPS and s["stopped"] == "max_steps"


def test_weights_drifting_apart_between_processes_stop_the_run(runs):
    """Process 1 changes a weight outside DDP during step 3: the checkpoint at step 4 compares every process's weights
    (`loop.weight_fingerprint`), stops the run on every process (exit 2) and writes no checkpoint for that step."""
    err = (runs / "desync.stderr").read_text()
    assert "the weights of process(es) [1] differ from process 0's" in err, err[-2000:]
    assert json.loads((runs / "desync" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (runs / "desync.json").exists() and not (runs / "export_desync").exists()
    assert json.loads((runs / "plain.json").read_text())["processes_in_sync"] is True


def test_fsdp_trains_the_weights_of_ddp_resumes_exactly_and_exports_once(runs):
    """FSDP2 (each parameter sharded over the 2 processes, the EMA too) against DDP on the same stream: the same
    weights (measured: bit-identical on this toy; tolerance 1e-6 for the order of float additions); stopped after
    step 5 and resumed, bit-identical to the run in one go (model, EMA, optimizer state); the checkpoints hold full
    weights (the DDP run's names and shapes), the optimizer state keyed by parameter name; the export written once."""
    s = json.loads((runs / "fsdp.json").read_text())
    assert s["distributed"] == "FSDP" and s["num_processes"] == 2 and "processes_in_sync" not in s
    assert s["data_skipped"] == json.loads((runs / "plain.json").read_text())["data_skipped"]
    for f in ("model.safetensors", "ema.safetensors"):
        fsdp, ddp = _weights(runs / "fsdp" / "checkpoint" / f), _weights(runs / "plain" / "checkpoint" / f)
        assert {k: v.shape for k, v in fsdp.items()} == {k: v.shape for k, v in ddp.items()}
        assert max((fsdp[k] - ddp[k]).abs().max().item() for k in fsdp) <= 1e-6, f
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = _weights(runs / "fsdp_split" / "checkpoint" / f), _weights(runs / "fsdp" / "checkpoint" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert "state.net.0.weight.exp_avg" in _weights(runs / "fsdp" / "checkpoint" / "optimizer.safetensors")
    rows = [json.loads(r) for r in (runs / "fsdp_split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("stopped") == "interrupted"] == [5]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
    for name in ("fsdp_split", "fsdp"):
        assert (runs / f"export_{name}" / "exports.log").read_text() == "0\n", name
    exported = load_file(str(runs / "export_fsdp" / "toy" / "model.safetensors"))
    ema = _weights(runs / "fsdp" / "checkpoint" / "ema.safetensors")
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)  # the full EMA


def test_a_checkpoint_resumes_under_the_other_kind_of_launch(runs):
    """Stopped after step 5 under FSDP and resumed under DDP, or the other way round: the weights and the optimizer
    state of the uninterrupted DDP run (the optimizer state converted between FSDP's keys, parameter names, and
    DDP's, parameter indices: `loop.optimizer_state_keyed`)."""
    plain = {f: _weights(runs / "plain" / "checkpoint" / f) for f in ("model.safetensors", "ema.safetensors")}
    for name, kind in (("fsdp_then_ddp", "MULTI_CPU"), ("ddp_then_fsdp", "FSDP")):
        assert json.loads((runs / f"{name}.json").read_text())["distributed"] == kind
        rows = [json.loads(r) for r in (runs / name / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r.get("stopped") == "interrupted"] == [5], name
        for f, ref in plain.items():
            got = _weights(runs / name / "checkpoint" / f)
            assert max((got[k] - ref[k]).abs().max().item() for k in ref) <= 1e-6, (name, f)
