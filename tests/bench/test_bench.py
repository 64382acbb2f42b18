"""`pocketdiff bench`: the registry, the composition arithmetic, the plan, JSON/plot output (tiny models: no timed
assertions), and dtype selection."""

import json

import pytest
import torch
from typer.testing import CliRunner

from pocketdiff.arch import list_presets
from pocketdiff.bench import BASELINE, DEFAULT_RUN, get_config, list_configs
from pocketdiff.bench.backends import BackendError, cast_inputs
from pocketdiff.bench.configs import DECODERS
from pocketdiff.bench.run import Plan, Task, add_speedups, compose, make_plans, run_bench, unique_tasks, variants
from pocketdiff.errors import PocketDiffError, SpecError, UnknownPresetError
from pocketdiff.precision import DTypeError, cpu_flags, native_bf16, resolve_dtype

# ------------------------------------------------------------------ registry


def test_registry_has_the_issue_rows():
    names = list_configs()
    for n in (BASELINE, "snapfusion-8", "mobilediffusion-8", "mobilediffusion-1", "mobilediffusion-lite-1"):
        assert n in names
    base = get_config(BASELINE)
    assert (base.unet, base.steps, base.cfg, base.decoder, base.dtype, base.backend) == ("sd15", 50, True, "sd",
                                                                                         "fp32", "eager")
    assert get_config("snapfusion-8").decoder == "pruned" and get_config("snapfusion-8").cfg
    assert not get_config("mobilediffusion-1").cfg and get_config("mobilediffusion-1").steps == 1
    for n in names:
        c = get_config(n)
        assert c.unet in list_presets() and c.decoder in DECODERS, n
    # every UNet with each of the three decoders
    for unet_row in ("snapfusion-8", "mobilediffusion-8", "mobilediffusion-1", "mobilediffusion-lite-1"):
        assert {get_config(n).decoder for n in names if n.startswith(unet_row) and
                get_config(n).steps == get_config(unet_row).steps and get_config(n).unet == get_config(unet_row).unet
                } == set(DECODERS)
    assert set(DEFAULT_RUN) <= set(names)


def test_unknown_config_names_the_known_ones():
    with pytest.raises(UnknownPresetError, match="sd15-50-cfg"):
        get_config("sd14-50")


# ------------------------------------------------------------------ composition arithmetic

def _plan(steps=8, cfg=True, batch=1, name="x"):
    c = get_config("snapfusion-8").with_(name=name, steps=steps, cfg=cfg, dtype="fp32")
    return make_plans([c], [512], [batch])[0]


def test_compose_is_text_plus_steps_unet_plus_decoder():
    p = _plan(steps=8)
    times = {p.text.key: [10.0, 20.0, 30.0], p.unet.key: [100.0, 300.0, 200.0], p.decoder.key: [50.0, 40.0, 60.0]}
    r = compose(p, times)
    assert r["text_ms"] == 20 and r["unet_step_ms"] == 200 and r["unet_ms"] == 1600 and r["decoder_ms"] == 50
    assert r["ms_per_image"] == 20 + 8 * 200 + 50
    per_round = [10 + 800 + 50, 20 + 2400 + 40, 30 + 1600 + 60]
    assert r["round_ms_per_image"] == per_round
    assert (r["ms_per_image_min"], r["ms_per_image_max"]) == (min(per_round), max(per_round))
    assert sum(r["shares"].values()) == pytest.approx(1.0)


def test_compose_divides_by_batch_and_cfg_doubles_the_unet_batch():
    p = _plan(steps=4, cfg=True, batch=2)
    assert (p.text.batch, p.unet.batch, p.decoder.batch) == (4, 4, 2)
    times = {p.text.key: [10.0], p.unet.key: [100.0], p.decoder.key: [30.0]}
    assert compose(p, times)["ms_per_image"] == (10 + 400 + 30) / 2
    q = _plan(steps=1, cfg=False)
    assert (q.text.batch, q.unet.batch, q.decoder.batch) == (1, 1, 1)


def test_speedups_are_against_the_baseline_at_the_same_size():
    base = {"name": BASELINE, "resolution": 512, "batch": 1, "ms_per_image": 1000.0,
            "round_ms_per_image": [1000.0, 2000.0, 900.0]}
    fast = {"name": "f", "resolution": 512, "batch": 1, "ms_per_image": 10.0, "round_ms_per_image": [10.0, 10.0, 10.0]}
    other = {"name": "f", "resolution": 256, "batch": 1, "ms_per_image": 5.0, "round_ms_per_image": [5.0]}
    add_speedups([base, fast, other])
    assert fast["speedup"] == 100 and fast["speedup_per_round"] == 100  # median of 100, 200, 90
    assert base["speedup"] == 1 and other["speedup"] is None


def test_unique_tasks_share_components_and_add_a_matmul_per_dtype():
    cfgs = variants([BASELINE, "mobilediffusion-1", "mobilediffusion-1-tiny"], native=True)
    assert [c.dtype for c in cfgs] == ["fp32", "bf16", "bf16"]  # auto -> bf16 with native bf16; baseline fp32
    tasks = unique_tasks(make_plans(cfgs, [512], [1]))
    keys = [t.key for t in tasks]
    assert len(keys) == len(set(keys))
    assert sum(t.component == "unet" for t in tasks) == 2  # sd15 b2, mobilediffusion b1 shared by two rows
    assert {t.dtype for t in tasks if t.component == "matmul"} == {"fp32", "bf16"}
    assert "unet:sd15:b2:512px:fp32:eager" in keys


def test_variants_override_all_but_the_baseline():
    cfgs = variants([BASELINE, "mobilediffusion-1"], dtypes=["fp32", "bf16"], backends=["eager", "eager-cl"],
                    native=False)
    names = [c.name for c in cfgs]
    assert names[0] == BASELINE and len(names) == 5
    assert "mobilediffusion-1@bf16-eager-cl" in names
    assert variants(["mobilediffusion-1"], native=False)[0].dtype == "fp32"  # auto without native bf16
    with pytest.raises(BackendError, match="eager"):
        variants(["mobilediffusion-1"], backends=["tensorrt"])
    with pytest.raises(SpecError, match="twice"):
        variants(["mobilediffusion-1", "mobilediffusion-1"])


def test_bad_resolution_and_batch():
    c = variants(["mobilediffusion-1"], native=False)
    with pytest.raises(SpecError, match="multiple of 64"):
        make_plans(c, [500], [1])
    with pytest.raises(SpecError, match="batch"):
        make_plans(c, [512], [0])


def test_cast_inputs_keeps_ids_and_timesteps():
    ids, x, t = torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, 4, 4), torch.tensor([999])
    a, b, c = cast_inputs((ids, x, t), torch.bfloat16, channels_last=True)
    assert a.dtype == torch.long and c.dtype == t.dtype and b.dtype == torch.bfloat16
    assert b.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ a tiny end-to-end run, JSON and plot

@pytest.fixture(scope="module")
def tiny_run():
    return run_bench([BASELINE, "mobilediffusion-1-tiny", "snapfusion-8"], resolutions=[64], batches=[1], runs=2,
                     warmup=0, threads=1, width=0.1, native=False).to_dict()


def test_tiny_run_rows_and_meta(tiny_run):
    rows = {r["name"]: r for r in tiny_run["rows"]}
    assert set(rows) == {BASELINE, "mobilediffusion-1-tiny", "snapfusion-8"}
    assert rows[BASELINE]["speedup"] == 1.0
    for r in rows.values():
        assert r["ms_per_image"] == pytest.approx(r["text_ms"] + r["unet_ms"] + r["decoder_ms"])
        assert r["unet_gflops"] > 0 and r["unet_gflop_s"] > 0 and r["matmul_gflop_s"] > 0
        assert len(r["round_ms_per_image"]) == 2
    for k in ("machine", "threads", "versions", "load_start", "load_end", "native_bf16", "date", "configs"):
        assert k in tiny_run
    assert tiny_run["versions"]["torch"] == torch.__version__.split("+")[0] or tiny_run["versions"]["torch"]
    # the UNet FLOPs double with the CFG batch
    t = tiny_run["tasks"]
    sd_unet = t[rows[BASELINE]["tasks"]["unet"]]
    assert sd_unet["batch"] == 2 and sd_unet["flops"] > 0 and len(sd_unet["times_ms"]) == 2


def test_plot_writes_a_png(tiny_run, tmp_path):
    from pocketdiff.bench.plot import plot_bench

    out = plot_bench(tiny_run, tmp_path / "b.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_plot_with_several_sizes(tmp_path):
    from pocketdiff.bench.plot import plot_bench

    res = run_bench(["mobilediffusion-1-tiny"], resolutions=[64, 128], batches=[1, 2], runs=1, warmup=0, threads=1,
                    width=0.1, native=False).to_dict()
    assert {(r["resolution"], r["batch"]) for r in res["rows"]} == {(64, 1), (64, 2), (128, 1), (128, 2)}
    assert all(r["speedup"] is None for r in res["rows"])  # no baseline in the run
    assert plot_bench(res, tmp_path / "s.png").stat().st_size > 0


# ------------------------------------------------------------------ CLI

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    from pocketdiff.cli import build_app

    return build_app()


def test_cli_list(app):
    r = runner.invoke(app, ["bench", "--list"])
    assert r.exit_code == 0, r.output
    assert BASELINE in r.output and "mobilediffusion-lite-1-tiny" in r.output and "eager-cl" in r.output


def test_cli_json_and_plot(app, tmp_path):
    j, png = tmp_path / "b.json", tmp_path / "b.png"
    r = runner.invoke(app, ["bench", "-c", "mobilediffusion-1", "--width", "0.1", "--resolution", "64", "--runs", "1",
                            "--warmup", "0", "--threads", "1", "--dtype", "fp32", "--json", str(j), "--plot",
                            str(png)])
    assert r.exit_code == 0, r.output
    d = json.loads(j.read_text())
    assert [row["name"] for row in d["rows"]] == [BASELINE, "mobilediffusion-1"]
    assert d["rows"][1]["dtype"] == "fp32" and d["command"].startswith("pocketdiff bench")
    assert png.stat().st_size > 0 and not list(tmp_path.glob("*.tmp*"))


def test_cli_bad_input_exits_2(capsys):
    from pocketdiff.cli import main

    for argv, msg in ((["bench", "-c", "nope"], "known"), (["bench", "--resolution", "100", "--width", "0.1"],
                                                          "multiple of 64"),
                      (["bench", "--dtype", "fp8"], "--dtype"), (["bench", "--no-baseline", "-c", BASELINE], "leaves")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        assert msg in capsys.readouterr().err, argv


# ------------------------------------------------------------------ dtype selection

def test_cpu_flags_and_native_bf16():
    info = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
    assert "avx512_bf16" in cpu_flags(info)
    assert native_bf16({"avx512_bf16"}, "AVX512") and native_bf16({"amx_bf16"}, "AVX512")
    assert native_bf16(set(), "AMX") and not native_bf16({"avx2", "avx512f"}, "AVX512")


def test_resolve_dtype():
    assert resolve_dtype("auto", native=True) == "bf16" and resolve_dtype("auto", native=False) == "fp32"
    assert resolve_dtype("fp32", native=True) == "fp32" and resolve_dtype("bf16", native=False) == "bf16"
    with pytest.raises(DTypeError, match="fp32") as e:
        resolve_dtype("fp16")
    assert isinstance(e.value, PocketDiffError)


# ------------------------------------------------------------------ the export runtimes as bench backends

def test_runtime_backends_match_eager():
    """A runtime backend exports the component fp32 and runs it: the same outputs as eager (so its timings are of the
    same network); bf16 is refused naming the fix; a run's rows carry the backend (`variants`)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from pocketdiff.bench import components as C
    from pocketdiff.bench.backends import prepare

    module, args = C.build_unet("mobilediffusion", width=0.1), C.unet_inputs(2, 8, width=0.1)
    with torch.inference_mode():
        ref = module(*args).sample
    # the UNet (an output object, three inputs) through OpenVINO, which runs the exported ONNX file: one export covers
    # the export path of both ONNX runtimes (onnxruntime's runner is tests/export's); exports cost CI time
    for backend in ("openvino",):
        fn, prep_s = prepare(backend, module, args, torch.float32)
        got = fn(*args)
        assert prep_s > 0 and got.shape == tuple(ref.shape) and float(ref.abs().max()) > 1e-2
        assert abs(got - ref.numpy()).max() <= 1e-3 * max(1.0, float(ref.abs().max())), backend
        with pytest.raises(BackendError, match="--dtype fp32"):
            prepare(backend, module, args, torch.bfloat16)
    configs = variants(["snapfusion-8"], ["fp32"], ["onnxruntime", "openvino"], native=False)
    assert [(c.name, c.backend) for c in configs] == [("snapfusion-8@fp32-onnxruntime", "onnxruntime"),
                                                      ("snapfusion-8@fp32-openvino", "openvino")]
