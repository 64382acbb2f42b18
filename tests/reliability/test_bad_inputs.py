"""The bad-input suite: realistic wrong inputs, one parametrised case each, run through the CLI in-process.

Every case must give exit code 2, one `error: ...` line naming the problem (checked by a pattern), no traceback,
and leave no output behind (the outputs a case names must not exist afterwards). Tiny models only (the session's
`quick_model_dir`, copied and damaged per case), so the whole suite takes well under a minute after the fixture.
docs/reliability.md lists the kinds covered.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    id: str
    argv: list[str]  # {m}: a fresh copy of the quick model, {t}: the case's temporary directory, {run}: a trained run
    match: str  # regex the error line must match
    setup: Callable[[dict], None] | None = None  # {"m": model copy, "t": tmp, "run": run copy} -> damage it
    outputs: list[str] = field(default_factory=list)  # paths ({t}/...) that must not exist afterwards


def _write(rel: str, data: bytes | str):
    def f(d: dict) -> None:
        p = Path(rel.format(**d))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return f


def _truncate(rel: str, keep: float = 0.5):
    def f(d: dict) -> None:
        p = Path(rel.format(**d))
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return f


def _swap_unet_config(d: dict) -> None:
    m = d["m"]
    """The UNet's config.json replaced by another architecture's (one transformer block fewer in the mid level)."""
    cfg = json.loads((m / "unet" / "config.json").read_text())
    is_tf = [isinstance(b, dict) and b.get("kind") == "tf" for b in cfg["mid"]]
    cfg["mid"] = [b for b, tf in zip(cfg["mid"], is_tf) if not tf] if any(is_tf) else [
        *cfg["mid"][:1], {"kind": "tf", "heads": 1, "head_dim": None}, *cfg["mid"][1:]]
    (m / "unet" / "config.json").write_text(json.dumps(cfg))


def _nan_unet(d: dict) -> None:
    m = d["m"]
    from safetensors.torch import load_file, save_file

    f = next((m / "unet").glob("*.safetensors"))
    sd = load_file(str(f))
    sd = {k: v * float("nan") if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, str(f))


def _both(*fs):
    def f(d: dict) -> None:
        for g in fs:
            g(d)
    return f


G = ["generate", "a red circle", "--model", "{m}", "--steps", "2"]
E = ["eval", "--model", "{m}", "--prompts", "heldout-single", "--steps", "2", "--limit", "2"]
OUT = "{t}/out.png"
TRAIN_VAE = ["train", "vae", "--preset", "quick", "--out", "{t}/run", "--set", "max_steps=1"]
RESUME = ["train", "vae", "--preset", "quick", "--out", "{run}", "--resume", "--set", "max_steps=2",
          "--export", "{t}/vae"]

CASES = [
    # --- generate: prompts
    Case("prompts-file-not-utf8", G[:1] + ["--prompts-file", "{t}/p.txt", *G[2:], "-o", OUT],
         r"--prompts-file .*p\.txt: not UTF-8 text \(byte 0xff", _write("{t}/p.txt", b"a red \xff circle\n"), [OUT]),
    Case("prompts-file-missing", G[:1] + ["--prompts-file", "{t}/none.txt", *G[2:], "-o", OUT],
         r"none\.txt: no such file", outputs=[OUT]),
    Case("prompts-file-is-dir", G[:1] + ["--prompts-file", "{t}", *G[2:], "-o", OUT], r"is a directory, expected a file",
         outputs=[OUT]),
    Case("no-prompt", ["generate", "--model", "{m}", "-o", OUT], r"give a prompt", outputs=[OUT]),
    # --- generate: the output path
    Case("out-read-only-dir", [*G, "-o", "/sys/pocketdiff-out.png"], r"-o|--out .*cannot write in /sys"),
    Case("out-is-dir", [*G, "-o", "{t}"], r"--out .*: is a directory; give a file name ending in \.png"),
    Case("out-no-extension", [*G, "-o", "{t}/image"], r"--out .*image: must end in \.png", outputs=["{t}/image"]),
    Case("out-other-extension", [*G, "-o", "{t}/image.gif"], r"must end in \.png", outputs=["{t}/image.gif"]),
    Case("out-parent-is-file", [*G, "-o", "{t}/f.txt/out.png"], r"f\.txt is a file, not a directory",
         _write("{t}/f.txt", "x")),
    # --- generate: sampling options
    Case("steps-0", [*G[:-1], "0", "-o", OUT], r"--steps 0: must be an integer from 1 to 1000", outputs=[OUT]),
    Case("steps-10000", [*G[:-1], "10000", "-o", OUT], r"--steps 10000: must be an integer from 1 to 1000",
         outputs=[OUT]),
    Case("steps-negative", [*G[:-1], "-3", "-o", OUT], r"--steps -3: must be", outputs=[OUT]),
    Case("guidance-nan", [*G, "--guidance", "nan", "-o", OUT], r"--guidance nan: must be a finite number >= 0",
         outputs=[OUT]),
    Case("guidance-inf", [*G, "--guidance", "inf", "-o", OUT], r"--guidance inf: must be a finite", outputs=[OUT]),
    Case("guidance-negative", [*G, "--guidance", "-1", "-o", OUT], r"--guidance -1.0: must be a finite number >= 0",
         outputs=[OUT]),
    Case("threads-0", [*G, "--threads", "0", "-o", OUT], r"--threads 0: must be an integer >= 1", outputs=[OUT]),
    Case("cols-0", ["generate", "a", "b", "--model", "{m}", "--cols", "0", "-o", OUT], r"--cols 0", outputs=[OUT]),
    Case("scheduler-unknown", [*G, "--scheduler", "euler", "-o", OUT], r"unknown scheduler 'euler'", outputs=[OUT]),
    # --- generate: the model directory
    Case("model-missing", ["generate", "a red circle", "--model", "{t}/nomodel", "-o", OUT], r"nomodel",
         outputs=[OUT]),
    Case("model-config-not-json", [*G, "-o", OUT], r"unet/config\.json: not valid JSON",
         _write("{m}/unet/config.json", "{not json"), [OUT]),
    Case("model-vae-truncated", [*G, "-o", OUT], r"vae/diffusion_pytorch_model\.safetensors is truncated",
         _truncate("{m}/vae/diffusion_pytorch_model.safetensors"), [OUT]),
    Case("model-text-encoder-garbage", [*G, "-o", OUT], r"text_encoder/model\.safetensors is not a safetensors file",
         _write("{m}/text_encoder/model.safetensors", b"\x00garbage" * 100), [OUT]),
    Case("model-tokenizer-broken", [*G, "-o", OUT], r"tokenizer/tokenizer\.json: not valid JSON",
         _write("{m}/tokenizer/tokenizer.json", '{"version": "1.0", "model": '), [OUT]),
    Case("model-config-swapped", [*G, "-o", OUT], r"unet/ weights do not match unet/config\.json: \d+ (missing|unexpected)",
         _swap_unet_config, [OUT]),
    Case("model-component-missing", [*G, "-o", OUT], r"missing component\(s\) \['vae'\]",
         lambda d: shutil.rmtree(d["m"] / "vae"), [OUT]),
    Case("model-weights-nan", [*G, "-o", OUT], r"non-finite .*no image was written", _nan_unet, [OUT]),
    Case("model-pickle-only", [*G, "-o", OUT], r"no \.safetensors weights \(only \['diffusion_pytorch_model\.bin'\]: pickle",
         lambda d: (d["m"] / "unet" / "diffusion_pytorch_model.safetensors").rename(
             d["m"] / "unet" / "diffusion_pytorch_model.bin"), [OUT]),
    Case("unet-is-a-vae", [*G, "--unet", "{m}/vae", "-o", OUT], r"holds a AutoencoderKL, not a FlexUNet", outputs=[OUT]),
    Case("demo-json-bad-row", ["generate", "a red circle", "--model", "{m}", "-o", OUT], r"demo\.json: row 0 is not a valid",
         _write("{m}/demo.json", '[{"name": "x", "steps": "eight", "guidance": 3}]'), [OUT]),
    Case("demo-json-not-json", ["generate", "a red circle", "--model", "{m}", "-o", OUT], r"demo\.json: not valid JSON",
         _write("{m}/demo.json", "[{"), [OUT]),
    # --- eval / demo
    Case("eval-limit-0", [*E[:-1], "0"], r"--limit 0: must be an integer >= 1"),
    Case("eval-limit-negative", [*E[:-1], "-3"], r"--limit -3: must be an integer >= 1"),
    Case("eval-guidance-not-numbers", [*E, "--guidance", "a,b"], r"--guidance 'a,b': expected numbers"),
    Case("eval-guidance-bad-range", [*E, "--guidance", "5:1:1"], r"--guidance '5:1:1': expected numbers"),
    Case("eval-guidance-0-list-nan", [*E, "--guidance", "0,nan"], r"--guidance nan: must be a finite"),
    Case("eval-json-read-only", [*E, "--json", "/sys/pocketdiff.json"], r"--json .*cannot write in /sys"),
    Case("eval-json-is-dir", [*E, "--json", "{t}"], r"--json .*is a directory"),
    Case("eval-json-wrong-extension", [*E, "--json", "{t}/r.txt"], r"--json .*must end in \.json",
         outputs=["{t}/r.txt"]),
    Case("eval-prompts-not-utf8", [*E[:4], "{t}/p.txt", *E[5:]], r"--prompts .*p\.txt: not UTF-8",
         _write("{t}/p.txt", b"\xfe\xff")),
    Case("demo-n-0", ["demo", "--model", "{m}", "--n", "0", "--out", "{t}/demo"], r"--n 0: must be an integer >= 1",
         outputs=["{t}/demo"]),
    Case("demo-out-is-file", ["demo", "--model", "{m}", "--n", "1", "--out", "{t}/f"], r"--out .*exists and is not a "
         "directory", _write("{t}/f", "x")),
    # --- arch / profile
    Case("arch-width-0", ["arch", "show", "tiny", "--width", "0"], r"--width 0(\.0)?: must be a finite number > 0"),
    Case("arch-width-negative", ["arch", "show", "tiny", "--width", "-1"], r"--width -1(\.0)?: must be"),
    Case("arch-width-tiny", ["arch", "show", "sd15", "--width", "0.001"], r"--width 0\.001: .* fewer than 8 channels"),
    Case("arch-json-is-dir", ["arch", "show", "tiny", "--json", "{t}"], r"--json .*is a directory"),
    Case("arch-spec-not-json", ["arch", "show", "{t}/s.json"], r"s\.json is not valid JSON", _write("{t}/s.json", "{")),
    Case("arch-spec-not-utf8", ["arch", "show", "{t}/s.yaml"], r"s\.yaml: not UTF-8", _write("{t}/s.yaml", b"\xff")),
    Case("arch-resolution-0", ["arch", "list", "--resolution", "0"], r"--resolution 0: must be an integer from 8 to 8192"),
    Case("profile-runs-0", ["profile", "tiny", "--runs", "0"], r"--runs 0: must be an integer >= 1"),
    Case("profile-lut-wrong-extension", ["profile", "tiny", "--lut", "{t}/lut.png"], r"--lut .*must end in \.json"),
    Case("profile-plot-read-only", ["profile", "tiny", "--plot", "/sys/p.png"], r"--plot .*cannot write in /sys"),
    # --- train
    Case("set-not-yaml", [*TRAIN_VAE, "--set", "lr=[1e-3,"], r"--set lr: '\[1e-3,' is not valid YAML",
         outputs=["{t}/run"]),
    Case("set-no-equals", [*TRAIN_VAE, "--set", "lr"], r"--set 'lr': expected KEY=VALUE", outputs=["{t}/run"]),
    Case("set-unknown-key", [*TRAIN_VAE, "--set", "options.kl_weigth=1"], r"options\.kl_weigth: unknown key",
         outputs=["{t}/run"]),
    Case("set-wrong-type", [*TRAIN_VAE, "--set", "batch_size=four"], r"batch_size: expected int", outputs=["{t}/run"]),
    Case("config-not-yaml", ["train", "vae", "--config", "{t}/c.yaml", "--out", "{t}/run"], r"c\.yaml: not valid YAML",
         _write("{t}/c.yaml", "stage: vae\nlr: [1,\n"), ["{t}/run"]),
    Case("config-not-utf8", ["train", "vae", "--config", "{t}/c.yaml", "--out", "{t}/run"], r"c\.yaml: not UTF-8",
         _write("{t}/c.yaml", b"stage: vae\n# \xff\n"), ["{t}/run"]),
    Case("config-missing", ["train", "vae", "--config", "{t}/none.yaml", "--out", "{t}/run"],
         r"config file not found", outputs=["{t}/run"]),
    Case("preset-unknown", ["train", "vae", "--preset", "quik", "--out", "{t}/run"], r"unknown preset 'quik'",
         outputs=["{t}/run"]),
    Case("train-out-is-file", ["train", "vae", "--preset", "quick", "--out", "{t}/f"], r"--out .*exists and is not a "
         "directory", _write("{t}/f", "x")),
    Case("train-export-under-file", [*TRAIN_VAE, "--export", "{t}/f/vae"], r"--export .*f is a file",
         _write("{t}/f", "x"), ["{t}/run"]),
    Case("train-json-wrong-extension", [*TRAIN_VAE, "--json", "{t}/s.yaml"], r"--json .*must end in \.json",
         outputs=["{t}/run"]),
    Case("caption-not-utf8", [*TRAIN_VAE, "--set", "options.data={t}/data"], r"a\.txt: not UTF-8",
         _both(lambda d: _png(d["t"] / "data" / "a.png"), _write("{t}/data/a.txt", b"a red \xff circle")), ["{t}/run"]),
    Case("resume-rng-corrupt", RESUME, r"rng\.safetensors is not a safetensors file",
         _write("{run}/checkpoint/rng.safetensors", b"\x01" * 64), ["{t}/vae"]),
    Case("resume-state-corrupt", RESUME, r"state\.json: not valid JSON", _write("{run}/checkpoint/state.json", "{"),
         ["{t}/vae"]),
    Case("resume-model-truncated", RESUME, r"model\.safetensors is truncated",
         _truncate("{run}/checkpoint/model.safetensors"), ["{t}/vae"]),
    Case("resume-optimizer-corrupt", RESUME, r"optimizer\.safetensors is truncated",
         _truncate("{run}/checkpoint/optimizer.safetensors", 0.3), ["{t}/vae"]),
    # --- prune / distill
    Case("prune-ratio", ["prune", "decoder", "--vae", "{m}", "--ratio", "1.5", "--out", "{t}/p"], r"--ratio must be in "
         r"\(0, 1\)", outputs=["{t}/p"]),
    Case("prune-out-is-file", ["prune", "decoder", "--vae", "{m}", "--out", "{t}/f"], r"--out .*exists and is not a "
         "directory", _write("{t}/f", "x")),
    Case("distill-teacher-missing", ["train", "distill", "--teacher", "{t}/none", "--preset", "quick", "--out",
                                     "{t}/run"], r"none", outputs=["{t}/run/export"]),
]


def _png(path: Path) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-step VAE run with a checkpoint, to damage for the resume cases."""
    from pocketdiff.cli import main

    run = tmp_path_factory.mktemp("run") / "vae"
    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--preset", "quick", "--out", str(run), "--export", str(run / "exported"),
              "--set", "max_steps=1"])
    assert e.value.code in (0, None)
    return run


def test_at_least_40_kinds():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, quick_model_dir, tmp_path, capsys, monkeypatch, request):
    from pocketdiff.cli import main

    monkeypatch.chdir(ROOT)
    model = tmp_path / "model"
    shutil.copytree(quick_model_dir, model, ignore=shutil.ignore_patterns("runs"))
    t = tmp_path / "t"
    t.mkdir()
    run = None
    if any("{run}" in a for a in case.argv):
        run = tmp_path / "run"
        shutil.copytree(request.getfixturevalue("trained_run"), run, ignore=shutil.ignore_patterns("exported"))
    fmt = {"m": model, "t": t, "run": run}
    if case.setup is not None:
        case.setup(fmt)
    before = sorted(p.name for p in t.iterdir())
    with pytest.raises(SystemExit) as e:
        main([a.format(**fmt) for a in case.argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert re.search(case.match, lines[0]), lines[0]
    for out in case.outputs:
        assert not Path(out.format(**fmt)).exists(), f"{out} was left behind"
    assert sorted(p.name for p in t.iterdir()) == before  # nothing half-written beside the outputs either


def test_eval_limit_1_gives_no_fid_instead_of_crashing(quick_model_dir, tmp_path, capsys):
    """`--limit 1` crashed in FID after all the generation: FID needs two images a side, so it is left out."""
    from pocketdiff.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(quick_model_dir), "--prompts", "heldout-single", "--steps", "1", "--limit", "1",
              "--json", str(tmp_path / "r.json")])
    assert e.value.code in (0, None), capsys.readouterr().err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 1 and r["fid"] is None
