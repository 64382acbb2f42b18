"""Every command of docs/real-path.md runs, on the tiny SD-1.5 fixture: the page's variables point at
`pocketdiff.testing`'s stand-ins, each command gets a seconds-long budget appended (a later flag overrides the
page's). The page's `accelerate launch` line for `train student` runs as it is written with 2 processes instead of
8 (DDP over gloo on the CPU, fp32: `ACCELERATE_USE_CPU=true`, `--num_processes 2`, `--mixed_precision no`); the
other `accelerate launch` lines (`train vpred`, `train distill`) run in this process, to keep the suite's time (a
2-process launch costs ~20 s on a 2-core machine, most of it imports)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "real-path.md"
FENCED = re.compile(r"```bash\n(.*?)```", re.S)
TWO_PROCESSES = ("train student",)  # launched with 2 processes (module docstring)

# the budget appended to each command (the fixture's sizes; click keeps an option's last value)
BUDGET = {
    ("train",): ["--preset", "quick", "--set", "max_steps=2", "--set", "batch_size=2", "--set", "mixed_precision=no"],
    ("data", "cache-latents"): ["--n", "6", "--batch-size", "3"],
    ("profile",): ["--resolution", "64", "--runs", "1", "--warmup", "0"],
    ("evolve",): ["--set", "first_steps=1", "--set", "train_steps=1", "--set", "final_steps=1", "--set", "max_rounds=1",
                  "--set", "probe_prompts=2", "--set", "probe_steps=1", "--set", "student_preset=quick"],
    ("generate",): ["--steps", "2"],
    ("eval",): ["--n", "2", "--steps", "2", "--batch-size", "2"],
}


def page_commands() -> list[str]:
    lines = []
    for block in FENCED.findall(PAGE.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line.startswith(("pocketdiff ", "accelerate launch ")):
                lines.append(line)
    return lines


def as_argv(line: str) -> list[str]:
    argv = shlex.split(os.path.expandvars(line))
    if argv[0] == "accelerate":
        argv = argv[argv.index("pocketdiff.cli") + 1:]
    else:
        argv = argv[1:]
    extra = next((v for k, v in BUDGET.items() if tuple(argv[:len(k)]) == k), [])
    return argv + extra


def launch_two_processes(line: str) -> subprocess.CompletedProcess:
    """The page's `accelerate launch` line as written, with 2 processes for its 8 and fp32 for its bf16 (a CPU)."""
    from pocketdiff.testing import free_port

    argv = shlex.split(os.path.expandvars(line))
    launch = argv[2:argv.index("-m")]  # the page's launcher options
    for flag, value in (("--num_processes", "2"), ("--mixed_precision", "no")):
        launch[launch.index(flag) + 1] = value
    assert "--multi_gpu" in launch, line
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "pocketdiff.cli", *as_argv(line)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def workdir(tmp_path, sd15_dir, caption_folder, monkeypatch):
    """The page's variables, as a user would set them, pointing at the fixture; run from an empty directory."""
    import webdataset as wds

    from pocketdiff.testing import make_clip_dir, make_inception_standin

    shards = tmp_path / "shards"
    shards.mkdir()
    rows = [json.loads(r) for r in (caption_folder / "captions.jsonl").read_text().splitlines()]
    for k in range(2):
        with wds.TarWriter(str(shards / f"{k:05d}.tar")) as w:
            for r in rows[k::2]:
                w.write({"__key__": Path(r["file"]).stem, "png": (caption_folder / r["file"]).read_bytes(),
                         "txt": r["caption"]})
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": i, "caption": r["caption"]} for i, r in enumerate(rows)]}))
    env = {"SD15": sd15_dir, "SHARDS": shards, "CLIP": make_clip_dir(tmp_path / "clip"),
           "INCEPTION": make_inception_standin(tmp_path / "inception.pt"), "COCO_CAPTIONS": coco,
           "COCO_IMAGES": caption_folder}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    run = tmp_path / "work"
    run.mkdir()
    (run / "probe-captions.txt").write_text("\n".join(r["caption"] for r in rows[:4]) + "\n")
    monkeypatch.chdir(run)
    return run


def test_every_command_on_the_page_runs(workdir, capsys):
    from pocketdiff.cli import main

    commands = page_commands()
    names = [" ".join(as_argv(c)[:2]) for c in commands]
    assert names == ["train vpred", "data cache-latents", "train student", "profile sd15-v/unet", "evolve --teacher",
                     "train distill", "prune decoder", "train decoder", "generate --model", "eval --protocol"]
    for line in commands:
        if line.startswith("accelerate launch") and " ".join(as_argv(line)[:2]) in TWO_PROCESSES:
            done = launch_two_processes(line)
            assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
            summary = json.loads((workdir / as_argv(line)[as_argv(line).index("--json") + 1]).read_text())
            # written by the main process alone; both processes trained bit-identical weights (the trainer compares
            # them at every checkpoint and stops otherwise); the export was written once (the trainer's own test,
            # tests/training/test_multiprocess.py)
            assert summary["num_processes"] == 2 and summary["distributed"] == "MULTI_CPU", summary
            assert summary["processes_in_sync"] is True and summary["samples_seen"] == 2 * 2 * 2  # steps x B x P
            assert done.stdout.count("num_processes: 2") == 1, done.stdout  # the summary, printed once
            continue
        with pytest.raises(SystemExit) as e:  # typer exits 0 on success
            main(as_argv(line))
        assert e.value.code in (0, None), f"{line}\n{capsys.readouterr().err[-2000:]}"
    for path in ("sd15-v/unet", "latents/index.json", "student-unet", "lut.json", "runs/evolve/unet", "unet-s8",
                 "vae-pruned", "vae-s8", "bus.png", "coco-val2014-stats.safetensors"):
        assert (workdir / path).exists(), path
    assert json.loads((workdir / "runs/student.json").read_text())["data_skipped"] == 0
    from pocketdiff.models import load_flexunet

    assert load_flexunet(workdir / "unet-s8").spec.name != load_flexunet(workdir / "sd15-v/unet").spec.name  # the
    # distilled UNet is the (evolved) SnapFusion student, not the teacher
    coco = json.loads((workdir / "runs/coco.json").read_text())
    assert coco["n"] == 2 and [r["guidance"] for r in coco["results"]] == [2.0, 4.0, 7.5]
