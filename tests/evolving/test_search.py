"""Algorithm 1 end to end on the tiny shapes model (seconds): the target is respected, resume, report; the dry run."""

import json

import pytest
from typer.testing import CliRunner

from pocketdiff.arch import get_spec
from pocketdiff.evolving import EvolveConfig, EvolveError, dry_run, evolve
from pocketdiff.io import write_json_atomic
from pocketdiff.profiling.latency import machine_info, profile_model
from pocketdiff.profiling.lut import build_lut, predict_latency


def make_lut(spec, path, resolution):
    prof = profile_model(spec, resolution=resolution, runs=1, warmup=0, components=False, threads=1)
    write_json_atomic(path, build_lut([prof], machine_info(), "test", "test"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def quick_lut(quick_model_dir, tmp_path_factory):
    from pocketdiff.arch import ArchSpec

    spec = ArchSpec.load(quick_model_dir / "unet" / "config.json")
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    make_lut(spec, path, resolution=spec.sample_size * 8)
    return path


def quick_config(model_dir, lut, **kw):
    return EvolveConfig(**{"teacher_dir": str(model_dir), "lut": str(lut), "target_speedup": 1.25, "group": 3,
                           "max_rounds": 4, "first_steps": 1, "train_steps": 1, "final_steps": 1, "probe_prompts": 2,
                           "probe_steps": 1, "student_preset": "quick", **kw})


def test_evolve_meets_the_target_writes_a_report_and_resumes(quick_model_dir, quick_lut, tmp_path):
    from pocketdiff.arch import FlexUNet

    cfg = quick_config(quick_model_dir, quick_lut)
    report = evolve(cfg, tmp_path / "run", log=lambda *_: None)
    lut = json.loads(quick_lut.read_text())
    teacher = FlexUNet.from_pretrained(quick_model_dir / "unet")
    assert report["teacher_predicted_ms"] == pytest.approx(predict_latency(teacher.spec, lut))
    assert report["target_ms"] == pytest.approx(report["teacher_predicted_ms"] / 1.25)
    traj = report["trajectory"]
    assert traj and traj[0]["removed"]  # the teacher is above the target: round 0 removes
    if report["predicted_ms"] > report["target_ms"]:
        assert len(traj) == cfg.max_rounds  # only running out of rounds may leave it above the target
    for row in traj:
        assert len(row["removed"]) + len(row["copied"]) <= cfg.group
        assert not (row["removed"] and row["copied"])
        if row["copied"]:
            assert row["predicted_ms"] <= report["target_ms"]
    evolved = FlexUNet.from_pretrained(tmp_path / "run" / "unet")
    assert report["predicted_ms"] == pytest.approx(predict_latency(evolved.spec, lut))
    assert sum(1 for _ in evolved.spec.all_blocks()) < sum(1 for _ in teacher.spec.all_blocks())
    assert (tmp_path / "run" / "trajectory.png").stat().st_size > 0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| round |" in md and "| stage |" in md and "| final |" in md
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["name"].endswith("-evolved")

    # a rerun continues from state.json: nothing is retrained, the same network comes out
    mtime = (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime
    again = evolve(cfg, tmp_path / "run", log=lambda *_: None)
    assert again["trajectory"] == report["trajectory"] and again["predicted_ms"] == report["predicted_ms"]
    assert (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime == mtime
    with pytest.raises(EvolveError, match="another configuration"):
        evolve(quick_config(quick_model_dir, quick_lut, group=1), tmp_path / "run")


def test_random_criterion_needs_no_scoring_and_also_meets_the_target(quick_model_dir, quick_lut, tmp_path):
    report = evolve(quick_config(quick_model_dir, quick_lut, criterion="random", max_rounds=6), tmp_path / "rand",
                    log=lambda *_: None)
    assert report["criterion"] == "random" and report["predicted_ms"] <= report["target_ms"]


def test_config_errors_name_the_problem():
    with pytest.raises(EvolveError, match="exactly one"):
        EvolveConfig(lut="x")
    with pytest.raises(EvolveError, match="> 1"):
        EvolveConfig(lut="x", target_speedup=0.5)


def test_dry_run_ranks_the_first_actions_by_latency(tmp_path):
    from pocketdiff.cli import build_app

    spec = get_spec("sd15", width=0.05)
    lut = make_lut(spec, tmp_path / "lut.json", resolution=64)
    rows = dry_run(spec, lut)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert {r["kind"] for r in rows} == {"tf", "res"} and len(rows) == 16 + 2
    spec.save(tmp_path / "spec.json")
    r = CliRunner().invoke(build_app(), ["evolve", "--dry-run", "--arch", str(tmp_path / "spec.json"), "--lut",
                                         str(tmp_path / "lut.json"), "--top", "5", "--json", str(tmp_path / "d.json")])
    assert r.exit_code == 0, r.output
    assert "first round's removal" in r.output and len(json.loads((tmp_path / "d.json").read_text())["actions"]) == 18
    r = CliRunner().invoke(build_app(), ["evolve", "--dry-run", "--arch", "sd15", "--lut", str(tmp_path / "lut.json")])
    assert r.exit_code != 0  # a table measured at another width has no entries for full-size sd15


def test_cli_bad_input_exits_2_with_a_message(tmp_path, capsys):
    from pocketdiff.cli import main

    for argv, needle in [
        (["evolve", "--lut", str(tmp_path / "none.json"), "--target-speedup", "1.5", "--out", str(tmp_path / "o")],
         "no lookup table"),
        (["evolve", "--lut", str(tmp_path / "none.json"), "--target-speedup", "0.5"], "must be > 1"),
        (["evolve", "--dry-run"], "needs --lut"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert needle in capsys.readouterr().err
