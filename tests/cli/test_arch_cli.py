import json

import pytest
from typer.testing import CliRunner

from pocketdiff.cli import build_app, main

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    return build_app()


def test_arch_list(app, tmp_path):
    r = runner.invoke(app, ["arch", "list", "--json", str(tmp_path / "l.json")])
    assert r.exit_code == 0, r.output
    assert "sd15" in r.output and "mobilediffusion-lite" in r.output
    rows = {d["name"]: d for d in json.loads((tmp_path / "l.json").read_text())["presets"]}
    assert rows["sd15"]["ratio_to_sd15"] == 1.0 and rows["mobilediffusion"]["ratio_to_sd15"] < 0.5


def test_arch_show_json(app, tmp_path):
    out = tmp_path / "sd15.json"
    r = runner.invoke(app, ["arch", "show", "sd15", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert {"params", "gflops", "macs", "resnets", "self_attn", "cross_attn", "stages"} <= set(d)
    assert (d["resnets"], d["self_attn"], d["cross_attn"]) == (22, 16, 16)
    assert [s["stage"] for s in d["stages"]][:2] == ["stem", "down0"] and "res tf(SA+CA)" in r.output
    assert not list(tmp_path.glob("*.tmp*"))


def test_arch_show_spec_file(app, tmp_path):
    spec = dict(channels=[32, 64], down=[["res", "tf"], ["res"]], mid=[], up=[["res", "res"], ["res", "res"]],
                norm_groups=8, name="mine")
    (tmp_path / "mine.json").write_text(json.dumps(spec))
    r = runner.invoke(app, ["arch", "show", str(tmp_path / "mine.json"), "--resolution", "128"])
    assert r.exit_code == 0, r.output
    assert "mine" in r.output


def test_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["arch", "show", "no-such-unet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sd15" in err and "snapfusion" in err


def test_bad_resolution_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["arch", "show", "sd15", "--resolution", "100"])
    assert e.value.code == 2 and "multiple of 8" in capsys.readouterr().err


def test_profile_tiny_writes_json_lut_plot(app, tmp_path):
    j, lut, png = tmp_path / "p.json", tmp_path / "lut.json", tmp_path / "p.png"
    r = runner.invoke(app, ["profile", "sd15", "--width", "0.1", "--resolution", "64", "--runs", "1",
                            "--warmup", "1", "--threads", "2", "--no-components", "--json", str(j), "--lut", str(lut),
                            "--plot", str(png)])
    assert r.exit_code == 0, r.output
    d = json.loads(j.read_text())["models"]["sd15@w0.1"]
    assert d["unet"]["ms_median"] > 0 and d["resnets"] == 22 and len(d["blocks"]) > 38
    t = json.loads(lut.read_text())
    assert {"backend", "resolution", "threads", "machine", "date", "torch_version", "entries", "unet_ms"} <= set(t)
    assert t["resolution"] == 64 and t["machine"]["cores"] >= 1
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_profile_bad_backend_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "sd15", "--width", "0.1", "--resolution", "64", "--backend", "tflite", "--no-components"])
    assert e.value.code == 2 and "onnxruntime" in capsys.readouterr().err
