"""Latency per backend and dtype (issue #30): eager PyTorch against ONNX Runtime, OpenVINO and ExecuTorch/XNNPACK,
fp32 and quantized, every row of one model measured interleaved in one process (round-robin) so ratios hold.

    python benchmarks/export_latency.py --exports DIR [DIR ...] [--model MODEL_DIR] [--full-size sd15,snapfusion,...] \
        [--runs 5 --warmup 1 --threads 2] --json docs/results/export/latency.json --md docs/results/export/latency.md \
        --plot docs/results/export/latency.png

Shipped models: the exported directories of the default model (`pocketdiff export models/shapes ...`, any formats and
quantizations; `--model`, default the shipped model, is the eager reference) and eager PyTorch. teacher-8 and student-8
share one UNet architecture (sd15@w0.1, different weights), so one UNet step is timed; the decoders differ (full VAE,
pruned): both are timed. Whole image = text encoder (CFG batch of 2) + 8 UNet steps + decoder, summed from the medians.

Full size (`--full-size NAME,...`): a CLIP ViT-L-size text encoder (`clip-l`: 77 tokens, the CFG batch of 2), the
presets' UNets (`sd15`, `snapfusion`, ...) at 512px (64x64 latents, the CFG batch of 2, random weights), SD-1.5's
decoder and the pruned decoder (`sd15-decoder`, `pruned-decoder`: the pruning recipe at ratio 0.5 on SD's decoder,
random weights), each exported fp32 to every format in `--formats`, plus `--quantized openvino:int8-hybrid` (the shipped
int8 recipe: the UNet hybrid-quantized, calibrated on `--calibration` random UNet inputs spread over the timesteps; text
encoder and decoder int8 weight-only). Exports go to `--work` and are reused from there (`--export-only` makes them
without timing, `--reuse-only` times only what is there, so that a quiet timing run does not wait on exports); an export
that fails or runs out of time is recorded, not fatal. One network at a time (memory), its rows interleaved; the JSON is
written after every network and `--resume` keeps the networks already in it. Whole image per backend: text encoder +
steps x UNet step + decoder for the CFG configurations of `pocketdiff bench` (sd15-50-cfg, snapfusion-8,
mobilediffusion-8), where every part ran in that backend.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from pocketdiff.export.common import BACKEND, read_manifest, runtime_versions
from pocketdiff.export.exporter import _export_network
from pocketdiff.export.latency import eager_tasks, measure, runtime_tasks
from pocketdiff.export.networks import DecoderNet, Shapes, TextEncoderNet, UNetNet, example_inputs
from pocketdiff.io import write_json_atomic, write_text_atomic
from pocketdiff.precision import native_bf16
from pocketdiff.profiling.latency import machine_info
from pocketdiff.resources import default_model_dir

STEPS = 8
# whole images at full size: (bench configuration, UNet preset, steps, decoder case), all with CFG (UNet batch 2)
DECODERS = ("sd15-decoder", "pruned-decoder")
IMAGES = (("sd15-50-cfg", "sd15", 50, "sd15-decoder"), ("snapfusion-8", "snapfusion", 8, "pruned-decoder"),
          ("mobilediffusion-8", "mobilediffusion", 8, "pruned-decoder"))


def shipped(exports: list[Path], runs: int, warmup: int, threads: int, work: Path, model: Path) -> dict:
    from pocketdiff.sampling.pipeline import load_pipeline
    from pocketdiff.pruning.decoder import load_vae_dir

    pipe = load_pipeline(model, unet_dir=model / "unet_s8")
    pruned = load_vae_dir(model / "vae_pruned").eval()
    shapes = Shapes.of(pipe)
    b2 = example_inputs(shapes, 2, vocab=int(pipe.text_encoder.config.vocab_size))
    b1 = example_inputs(shapes, 1)
    inputs = {"text_encoder": b2["text_encoder"], "unet": b2["unet"], "decoder": b1["decoder"],
              "decoder_pruned": b1["decoder"]}
    nets = {"text_encoder": TextEncoderNet(pipe.text_encoder).eval(), "unet": UNetNet(pipe.unet).eval(),
            "decoder": DecoderNet(pipe.vae).eval(), "decoder_pruned": DecoderNet(pruned).eval()}
    rows = {"torch fp32": eager_tasks(nets, inputs)}
    if native_bf16():  # eager bf16: what `--dtype auto` runs on CPUs with native bf16 (and `--backend auto` weighs)
        bf16 = {k: copy.deepcopy(n).to(torch.bfloat16) for k, n in nets.items()}
        rows["torch bf16"] = eager_tasks(bf16, {k: tuple(a.to(torch.bfloat16) if a.is_floating_point() and
                                                         not (k == "unet" and i == 1) else a for i, a in enumerate(v))
                                                for k, v in inputs.items()})
    pruned_files: dict[str, dict] = {}
    for d in exports:
        m = read_manifest(d)
        fmt, q = m["format"], m["quantize"]
        label = f"{BACKEND[fmt]} {'fp32' if q == 'none' else q}"
        files = {n: m["networks"][n]["files"] for n in ("text_encoder", "unet", "decoder")}
        tasks = runtime_tasks(fmt, d, files, inputs, threads)
        if fmt not in pruned_files:  # the pruned decoder, exported fp32 once per format
            sub = work / f"pruned_{fmt}"
            sub.mkdir(parents=True, exist_ok=True)
            pruned_files[fmt] = _export_network(fmt, "decoder", nets["decoder_pruned"], {1: b1, 2: example_inputs(
                shapes, 2)}, sub, "none", None)
        tasks.update(runtime_tasks(fmt, work / f"pruned_{fmt}", {"decoder_pruned": pruned_files[fmt]}, inputs,
                                   threads))
        rows[label] = tasks
    res = measure(rows, runs, warmup)
    for row in res.values():
        te, unet = row["text_encoder"]["median_ms"], row["unet"]["median_ms"]
        row["image_teacher8_or_student8_ms"] = te + STEPS * unet + row["decoder"]["median_ms"]
        row["image_student8_pruned_ms"] = te + STEPS * unet + row["decoder_pruned"]["median_ms"]
    return res


def _calibration(n: int) -> list[tuple[torch.Tensor, ...]]:
    """UNet inputs for int8 calibration of a random-weight UNet: CFG batches at n timesteps spread over 999..1."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 4, 64, 64, generator=g), torch.full((2,), float(t)), torch.randn(2, 77, 768, generator=g))
            for t in torch.linspace(999, 1, n).round().tolist()]


def _network(name: str, kind: str):
    """(module, the timed inputs) of one full-size network, random weights, seeded."""
    from pocketdiff.arch.presets import create
    from pocketdiff.bench.components import build_text_encoder, text_inputs
    from pocketdiff.pruning.decoder import prune_decoder, sd15_vae

    torch.manual_seed(0)
    if kind == "text_encoder":
        return build_text_encoder().eval(), text_inputs(2)
    if kind == "unet":
        return (UNetNet(create(name, sample_size=64).eval()).eval(),
                (torch.randn(2, 4, 64, 64), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)))
    vae = sd15_vae()
    return DecoderNet(prune_decoder(vae, 0.5) if name == "pruned-decoder" else vae).eval(), (torch.randn(1, 4, 64, 64),)


def _export(fmt: str, quantize: str, kind: str, net, args, sub: Path, calib_n: int, limit_s: float,
            reuse_only: bool = False) -> dict:
    """Export (or reuse) one network into `sub`: {"files"} or {"error"}, with the seconds it took."""
    done = sub / "files.json"
    if done.is_file():
        return json.loads(done.read_text())
    if reuse_only:
        return {"missing": f"not exported in {sub} (--reuse-only)"}
    sub.mkdir(parents=True, exist_ok=True)
    if kind == "decoder":
        batches = {1: {kind: args}, 2: {kind: tuple(torch.cat([a, a]) for a in args)}}
    else:
        batches = {1: {kind: tuple(a[:1] for a in args)}, 2: {kind: args}}
    if fmt == "executorch":  # static shapes: only the timed batch (the UNet's and text encoder's 2, the decoder's 1)
        import pocketdiff.export.exporter as ex

        ex.ET_BATCHES = {**ex.ET_BATCHES, kind: [args[0].shape[0]]}
    if quantize == "int8-hybrid" and kind != "unet":
        quantize = "int8-weights"  # the recipe: the other networks weight-only
    t0 = time.perf_counter()
    try:
        calib = _calibration(calib_n) if quantize == "int8-hybrid" else None
        rec = {"files": _export_network(fmt, kind, net, batches, sub, quantize, calib), "quantize": quantize}
    except Exception as e:  # recorded in the table: an export that cannot be made here is a result too
        rec = {"error": f"{type(e).__name__}: {e}"[:400], "trace": traceback.format_exc()[-1500:]}
    rec["export_s"] = round(time.perf_counter() - t0, 1)
    if rec["export_s"] > limit_s and "files" in rec:
        rec["note"] = f"took longer than --export-limit {limit_s:.0f} s"
    write_json_atomic(done, rec)
    return rec


def _kind(name: str) -> str:
    return "text_encoder" if name == "clip-l" else "decoder" if name in DECODERS else "unet"


def full_size(names: list[str], variants: list[tuple[str, str]], runs: int, warmup: int, threads: int, work: Path,
              calib_n: int, limit_s: float, export_only: bool, known: dict, done=lambda out: None,
              reuse_only: bool = False) -> dict:
    out = dict(known)
    for name, kind in ((n, _kind(n)) for n in names):
        if name in known:
            continue
        net, args = _network(name, kind)
        rows = {} if export_only else {"torch fp32": eager_tasks({kind: net}, {kind: args})}
        exports = {}
        for fmt, q in variants:
            label = f"{BACKEND[fmt]} {'fp32' if q == 'none' else q}"
            sub = work / f"{name}_{fmt}_{q}"
            exports[label] = rec = _export(fmt, q, kind, net, args, sub, calib_n, limit_s, reuse_only)
            print(name, label, {k: v for k, v in rec.items() if k != "trace"}, flush=True)
            if "files" in rec and not export_only:
                rows[label] = runtime_tasks(fmt, sub, {kind: rec["files"]}, {kind: args}, threads)
        if export_only:
            continue
        res = measure(rows, runs, warmup)
        out[name] = {"part": kind, "params": sum(p.numel() for p in net.parameters()), "rows": res,
                     "exports": {k: {x: v for x, v in r.items() if x != "trace"} for k, r in exports.items()}}
        print(name, {r: round(v[kind]["median_ms"]) for r, v in res.items()}, flush=True)
        done(out)
        del rows, net, res
        gc.collect()
    return out


def images(full: dict) -> dict:
    """ms per image of the CFG configurations, per backend label present in all three of its networks."""
    out = {}
    for config, unet, steps, decoder in IMAGES:
        parts = [full.get("clip-l"), full.get(unet), full.get(decoder)]
        if not all(parts):
            continue
        te, un, de = ({lab: r[c["part"]]["median_ms"] for lab, r in c["rows"].items()} for c in parts)
        out[config] = {lab: {"text_encoder_ms": te[lab], "unet_step_ms": un[lab], "steps": steps,
                             "decoder_ms": de[lab], "image_ms": te[lab] + steps * un[lab] + de[lab]}
                       for lab in te if lab in un and lab in de}
    return out


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['threads']} threads; "
             f"{result['date']}; runs {result['runs']} (median, after {result['warmup']} warm-up), interleaved.", ""]
    if result.get("shipped"):
        lines += ["### Shipped models (64px images), ms", "",
                  "| backend, dtype | text encoder (b2) | UNet step (b2) | decoder | pruned decoder | "
                  "teacher-8 / student-8 image | student-8 + pruned decoder image |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in result["shipped"].items():
            lines.append(f"| {label} | {r['text_encoder']['median_ms']:.1f} | {r['unet']['median_ms']:.1f} | "
                         f"{r['decoder']['median_ms']:.1f} | {r['decoder_pruned']['median_ms']:.1f} | "
                         f"{r['image_teacher8_or_student8_ms']:.0f} | {r['image_student8_pruned_ms']:.0f} |")
    if result.get("full_size"):
        labels = sorted({lab for c in result["full_size"].values() for lab in c["rows"]},
                        key=lambda s: (s != "torch fp32", s))
        lines += ["", "### Full-size networks at 512px (random weights), ms: text encoder and UNet step at the CFG "
                  "batch of 2, decoder at batch 1 (x: the export failed, see the JSON's `exports`)",
                  "", "| network | params (M) | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for name, c in result["full_size"].items():
            cells = [f"{c['rows'][lab][c['part']]['median_ms']:,.0f}" if lab in c["rows"] else
                     "x" if "error" in c.get("exports", {}).get(lab, {}) else "-" for lab in labels]
            lines.append(f"| {name} | {c['params'] / 1e6:.0f} | " + " | ".join(cells) + " |")
        for name, c in result["full_size"].items():
            for lab, e in c.get("exports", {}).items():
                if "error" in e:
                    lines.append(f"\n{name}, {lab}: export failed after {e['export_s']:.0f} s: {e['error']}")
    if result.get("images"):
        labels = sorted({lab for c in result["images"].values() for lab in c}, key=lambda s: (s != "torch fp32", s))
        lines += ["", "### Whole image at 512px (text encoder + steps x UNet step + decoder, CFG), s", "",
                  "| configuration | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for name, c in result["images"].items():
            lines.append(f"| {name} | " + " | ".join(f"{c[lab]['image_ms'] / 1e3:.1f}" if lab in c else "-"
                                                   for lab in labels) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if result.get("shipped"):
        panels.append(("shipped: UNet step (b2), ms", {k: v["unet"]["median_ms"] for k, v in result["shipped"].items()}))
        panels.append(("shipped: student-8 + pruned decoder image, ms",
                       {k: v["image_student8_pruned_ms"] for k, v in result["shipped"].items()}))
    for name, c in (result.get("full_size") or {}).items():
        panels.append((f"{name} 512px {c['part']}, ms", {k: v[c["part"]]["median_ms"] for k, v in c["rows"].items()}))
    for name, c in (result.get("images") or {}).items():
        panels.append((f"{name}: whole 512px image, ms", {k: v["image_ms"] for k, v in c.items()}))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 + 0.45 * sum(len(p[1]) for p in panels) + len(panels)))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (title, vals) in zip(axes, panels):
        names = list(vals)
        ax.barh(names, [vals[n] for n in names], color=["#888" if n.startswith("torch") else "#3a7" for n in names])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        for i, n in enumerate(names):
            ax.text(vals[n], i, f" {vals[n]:.0f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exports", nargs="*", type=Path, default=[], help="exported directories of the default model")
    ap.add_argument("--model", type=Path, help="the model the exports were made from (default: the shipped model)")
    ap.add_argument("--full-size", default="", help="comma-separated networks: clip-l, UNet presets (sd15, snapfusion, "
                    "mobilediffusion, mobilediffusion-lite), sd15-decoder, pruned-decoder")
    ap.add_argument("--formats", default="onnx,openvino,executorch", help="fp32 formats for --full-size")
    ap.add_argument("--quantized", default="", help="FORMAT:QUANTIZE rows for --full-size (openvino:int8-hybrid)")
    ap.add_argument("--calibration", type=int, default=8, help="calibration inputs for a full-size int8 UNet")
    ap.add_argument("--export-limit", type=float, default=600.0, help="note exports slower than this many seconds")
    ap.add_argument("--export-only", action="store_true", help="make the --full-size exports in --work, time nothing")
    ap.add_argument("--reuse-only", action="store_true", help="time only the exports already in --work")
    ap.add_argument("--resume", action="store_true", help="keep the full-size networks already in --json")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="where the full-size exports are written and reused (GBs; default: a "
                    "temporary directory)")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    variants = [(f, "none") for f in a.formats.split(",") if f] + [tuple(v.split(":")) for v in a.quantized.split(",")
                                                                    if v]
    result = {"machine": machine_info(), "python": platform.python_version(), "threads": a.threads,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": a.runs, "warmup": a.warmup,
              "versions": {f: runtime_versions(f) for f in ("onnx", "openvino", "executorch")},
              "command": " ".join(sys.argv)}
    known = json.loads(a.json.read_text()) if a.resume and a.json.is_file() else {}
    if known.get("full_size"):
        result["full_size_dates"] = {**known.get("full_size_dates", {}), **{n: known.get("date")
                                     for n in known["full_size"] if n not in known.get("full_size_dates", {})}}
    if a.work:
        a.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export_latency_", dir=a.work) as tmp:
        work = a.work or Path(tmp)
        if a.exports:
            result["shipped"] = shipped(a.exports, a.runs, a.warmup, a.threads, Path(tmp), a.model or
                                        default_model_dir())
            write_json_atomic(a.json, result)
        presets = [p for p in a.full_size.split(",") if p]
        if presets:  # written after every network: a run stopped for time keeps what it measured
            def save(out):
                dates = {**result.get("full_size_dates", {}), **{n: result["date"] for n in out
                                                                 if n not in known.get("full_size", {})}}
                write_json_atomic(a.json, {**result, "full_size": out, "full_size_dates": dates, "images": images(out)})

            out = full_size(presets, variants, a.runs, a.warmup, a.threads, work, a.calibration, a.export_limit,
                            a.export_only, known.get("full_size", {}), done=save, reuse_only=a.reuse_only)
            if a.export_only:
                return
            save(out)
            result = json.loads(a.json.read_text())
    write_json_atomic(a.json, result)
    if a.md:
        write_text_atomic(a.md, markdown(result))
    if a.plot:
        plot(result, a.plot)
    print(markdown(result))


if __name__ == "__main__":
    main()
