"""Latency per backend and dtype (issue #30): eager PyTorch against ONNX Runtime, OpenVINO and ExecuTorch/XNNPACK,
fp32 and quantized, every row of one model measured interleaved in one process (round-robin) so ratios hold.

    python benchmarks/export_latency.py --exports DIR [DIR ...] [--full-size sd15,snapfusion,...] \
        [--runs 5 --warmup 1 --threads 2] --json docs/results/export/latency.json --md docs/results/export/latency.md \
        --plot docs/results/export/latency.png

Shipped models: the exported directories of the default model (`pocketdiff export models/shapes ...`, any formats and
quantizations) and eager PyTorch. teacher-8 and student-8 share one UNet architecture (sd15@w0.1, different weights),
so one UNet step is timed; the decoders differ (full VAE, pruned): both are timed. Whole image = text encoder (CFG
batch of 2) + 8 UNet steps + decoder, summed from the medians.
Full size (`--full-size`): the presets' UNets at 512px (64x64 latents, random weights), SD-1.5's decoder and the
pruned decoder (the pruning recipe at ratio 0.5 on SD's decoder, random weights), each exported fp32 to every format in
`--formats` into a temporary directory; one preset at a time (memory), its rows interleaved.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pocketdiff.export.common import read_manifest, runtime_versions  # noqa: E402
from pocketdiff.export.exporter import BACKEND, _export_network  # noqa: E402
from pocketdiff.export.latency import eager_tasks, measure, runtime_tasks  # noqa: E402
from pocketdiff.export.networks import DecoderNet, Shapes, TextEncoderNet, UNetNet, example_inputs  # noqa: E402
from pocketdiff.io import write_json_atomic, write_text_atomic  # noqa: E402
from pocketdiff.precision import native_bf16  # noqa: E402
from pocketdiff.profiling.latency import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = 8


def shipped(exports: list[Path], runs: int, warmup: int, threads: int, work: Path) -> dict:
    from pocketdiff.sampling.pipeline import load_pipeline
    from pocketdiff.pruning.decoder import load_vae_dir

    model = REPO / "models" / "shapes"
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


def full_size(presets: list[str], formats: list[str], runs: int, warmup: int, threads: int, work: Path,
              done=lambda out: None) -> dict:
    from pocketdiff.arch.presets import create
    from pocketdiff.pruning.decoder import prune_decoder, sd15_vae

    out = {}
    cases = [(p, "unet") for p in presets] + [("sd15-decoder", "decoder"), ("pruned-decoder", "decoder")]
    for name, kind in cases:
        torch.manual_seed(0)
        if kind == "unet":
            net = UNetNet(create(name, sample_size=64).eval()).eval()
            args = (torch.randn(2, 4, 64, 64), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768))
        else:
            vae = sd15_vae()
            net = DecoderNet(prune_decoder(vae, 0.5) if name == "pruned-decoder" else vae).eval()
            args = (torch.randn(1, 4, 64, 64),)
        rows = {"torch fp32": eager_tasks({kind: net}, {kind: args})}
        export_s = {}
        for fmt in formats:
            sub = work / f"{name}_{fmt}"
            sub.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            batches = {1: {kind: tuple(a[:1] for a in args)}, 2: {kind: args}}
            if kind == "decoder":
                batches = {1: {kind: args}, 2: {kind: tuple(torch.cat([a, a]) for a in args)}}
            files = _export_network(fmt, kind, net, batches, sub, "none", None)
            if fmt == "executorch":  # the timed batch only
                files = {k: v for k, v in files.items() if int(k) == args[0].shape[0]}
            export_s[fmt] = round(time.perf_counter() - t0, 1)
            rows[f"{BACKEND[fmt]} fp32"] = runtime_tasks(fmt, sub, {kind: files}, {kind: args}, threads)
        res = measure(rows, runs, warmup)
        out[name] = {"part": kind, "params": sum(p.numel() for p in net.parameters()), "export_s": export_s,
                     "rows": res}
        print(name, {r: round(v[kind]["median_ms"]) for r, v in res.items()}, flush=True)
        done(out)
        del rows, net, res
        gc.collect()
        for fmt in formats:
            shutil.rmtree(work / f"{name}_{fmt}", ignore_errors=True)
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
        lines += ["", "### Full-size presets at 512px (random weights), ms: UNet step at batch 2, decoder at batch 1",
                  "", "| network | params (M) | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for name, c in result["full_size"].items():
            cells = [f"{c['rows'][lab][c['part']]['median_ms']:.0f}" if lab in c["rows"] else "-" for lab in labels]
            lines.append(f"| {name} | {c['params'] / 1e6:.0f} | " + " | ".join(cells) + " |")
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
    ap.add_argument("--full-size", default="", help="comma-separated presets (sd15,snapfusion,mobilediffusion,...)")
    ap.add_argument("--formats", default="onnx,openvino,executorch", help="formats for --full-size")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="where the full-size exports are written (GBs; default: the temp dir)")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    formats = [f for f in a.formats.split(",") if f]
    result = {"machine": machine_info(), "python": platform.python_version(), "threads": a.threads,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": a.runs, "warmup": a.warmup,
              "versions": {f: runtime_versions(f) for f in ("onnx", "openvino", "executorch")},
              "command": " ".join(sys.argv)}
    if a.work:
        a.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export_latency_", dir=a.work) as work:
        if a.exports:
            result["shipped"] = shipped(a.exports, a.runs, a.warmup, a.threads, Path(work))
            write_json_atomic(a.json, result)
        presets = [p for p in a.full_size.split(",") if p]
        if presets:  # written after every preset: a run stopped for time keeps what it measured
            result["full_size"] = full_size(presets, formats, a.runs, a.warmup, a.threads, Path(work),
                                            done=lambda out: write_json_atomic(a.json, {**result, "full_size": out}))
    write_json_atomic(a.json, result)
    if a.md:
        write_text_atomic(a.md, markdown(result))
    if a.plot:
        plot(result, a.plot)
    print(markdown(result))


if __name__ == "__main__":
    main()
