"""`pocketdiff generate`, `pocketdiff eval`, `pocketdiff demo`: run and measure a text-to-image model directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pocketdiff.errors import DataError
from pocketdiff.io import write_json_atomic, write_png_atomic
from pocketdiff.validation import check_int, check_output_dir, check_output_file

MODEL_HELP = "model directory, diffusers layout [default: $POCKETDIFF_MODEL, else the shipped shapes-world model]"
SCHEDULER_HELP = "ddim | dpm | dpm++ (diffusers' solvers) | ufogen (one-step / re-noising, for UFOGen UNets)"
DEVICE_HELP = "auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps"


def _model(model: Path | None) -> Path:
    from pocketdiff.resources import default_model_dir

    return model if model is not None else default_model_dir()


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name!r} is not a device; use {DEVICE_HELP}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: this PyTorch build sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def _check_sampling(model: Path, steps: int | None, guidances: list[float], threads: int | None) -> None:
    """Steps within the model's training schedule, guidance finite >= 0, threads >= 1: before any model loads."""
    from pocketdiff.loading import read_scheduler_config
    from pocketdiff.sampling.pipeline import check_sampling_options

    check_int("--threads", threads, 1)
    if not Path(model).is_dir():
        raise DataError(f"--model {model}: no such model directory")
    train_steps = read_scheduler_config(model).get("num_train_timesteps", 1000)
    for g in guidances:
        check_sampling_options(steps, g, train_steps)


BACKEND_HELP = ("auto (on the CPU: the backend measured fastest for this model here, torch, onnxruntime or openvino; "
                "measured once, then cached) | torch | onnxruntime | openvino | executorch: run the networks in that runtime "
                "(an ordinary model directory is exported once, fp32 and parity-checked, into "
                "~/.cache/pocketdiff/exports)")
DTYPE_HELP = ("auto (bf16 where the CPU has native bf16, avx512_bf16 / AMX, and the model's bf16 quality was "
              "measured to hold: demo.json's auto_dtype; else fp32) | fp32 | bf16")


def _pipe(model: Path, unet: Optional[Path], vae: Optional[Path], scheduler: str, threads: int | None,
          device: str = "auto", dtype: str = "fp32", backend: str = "torch"):
    import torch

    from pocketdiff.evaluation.demo import resolve_model_dtype
    from pocketdiff.sampling.pipeline import load_pipeline

    if threads:
        torch.set_num_threads(threads)
    target = _device(device)  # checked before the (slower) load, so a bad --device fails at once
    from pocketdiff.export import is_export_dir, load_exported_pipeline
    from pocketdiff.export.cache import cached_export, check_backend

    fmt, auto, runtime = check_backend(backend), None, None
    if backend == "auto" and target.type == "cpu" and not is_export_dir(model):
        from pocketdiff.export.cache import AUTO_RUNS, auto_backend

        backend, auto = auto_backend(model, unet, vae, resolve_model_dtype(dtype, model, unet, vae, target), threads)
        fmt, runtime = AUTO_RUNS[backend]  # OpenVINO runs the ONNX export the choice was measured on
    if fmt is not None and not is_export_dir(model):
        if target.type != "cpu":
            raise DataError(f"--backend {backend} runs on the CPU; use --device cpu")
        model, unet, vae = cached_export(model, fmt, unet, vae, threads), None, None
    if is_export_dir(model):  # `pocketdiff export`'s output: the networks run in ONNX Runtime / OpenVINO / ExecuTorch
        if unet is not None or vae is not None:
            raise DataError(f"{model} is an exported directory: its networks are fixed; export again with "
                            "`pocketdiff export MODEL --unet NAME --vae NAME` to change them")
        if target.type != "cpu":
            raise DataError(f"{model} is an exported directory: it runs on the CPU; use --device cpu")
        pipe = load_exported_pipeline(model, scheduler=scheduler, threads=threads, runtime=runtime)
        pipe.dtype_name = "fp32" if pipe.manifest["quantize"] == "none" else pipe.manifest["quantize"]
        pipe.backend_auto = auto
        return pipe
    dt = resolve_model_dtype(dtype, model, unet, vae, target)
    pipe = load_pipeline(model, unet_dir=unet, vae_dir=vae, scheduler=scheduler, dtype=dt).to(target)
    pipe.dtype_name = dt
    pipe.backend, pipe.backend_auto = "torch", auto
    return pipe


def _clip_dir(model: Path) -> Path:
    """Where the domain CLIP (an evaluator, not part of the model under test) lives: an exported directory's source."""
    from pocketdiff.export import is_export_dir, read_manifest

    return Path(read_manifest(model)["source"]["model"]) if is_export_dir(model) else model


def generate(
    prompt: list[str] = typer.Argument(None, help="one or more prompts (a grid for several)"),
    prompts_file: Path = typer.Option(None, "--prompts-file", help="a text file, one prompt per line"),
    model: Path = typer.Option(None, "--model", help=MODEL_HELP, show_default=False),
    unet: Path = typer.Option(None, "--unet", help="use this UNet directory instead of the model's"),
    vae: Path = typer.Option(None, "--vae", help="use this VAE directory instead of the model's"),
    steps: int = typer.Option(None, "--steps", help="default: the model's default row in demo.json, else 50"),
    guidance: float = typer.Option(None, "--guidance", help="classifier-free guidance scale (1 = off); default: "
                                   "the model's default row in demo.json, else 3"),
    scheduler: str = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    seed: int = typer.Option(0, "--seed", help="image i uses seed+i: same seed, same image"),
    cols: int = typer.Option(8, "--cols", help="grid columns"),
    out: Path = typer.Option(Path("out.png"), "-o", "--out"),
    threads: int = typer.Option(None, "--threads"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP, envvar="POCKETDIFF_BACKEND"),
) -> None:
    """Generate images from text."""
    model = _model(model)
    from pocketdiff.training.loop import make_grid

    from pocketdiff.loading import read_lines

    check_output_file("--out", out, (".png",))
    check_int("--cols", cols, 1)
    prompts = list(prompt or [])
    if prompts_file is not None:
        prompts += read_lines(prompts_file, "--prompts-file")
    if not prompts:
        raise DataError('give a prompt ("a red circle left of a blue square") or --prompts-file FILE')
    from pocketdiff.evaluation.demo import default_variant

    # without --unet, the model's default row in demo.json (shipped: the 8-step student) fills the unset options
    default = default_variant(model) if unet is None else {}
    unet, vae = unet or default.get("unet"), vae or default.get("vae")
    steps = steps if steps is not None else default.get("steps", 50)
    guidance = guidance if guidance is not None else default.get("guidance", 3.0)
    scheduler = scheduler or default.get("scheduler", "ddim")
    _check_sampling(model, steps, [guidance], threads)
    pipe = _pipe(model, unet, vae, scheduler, threads, device, dtype, backend)
    gen = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=seed)
    image = gen.images[0] if len(prompts) == 1 else make_grid(gen.images, cols=cols)
    write_png_atomic(out, image)
    t = gen.timings
    name = f"{default['name']}: " if default else ""
    typer.echo(f"{name}{steps} {scheduler} steps, w {guidance:g}; {pipe.dtype_name}; wrote {out} "
               f"({len(prompts)} image(s), {pipe.backend}); "
               f"text encoder {t.text_encoder:.0f} ms, UNet {t.unet_total:.0f} ms ({t.unet_calls} calls), "
               f"decoder {t.decoder:.0f} ms")


def eval_cmd(
    model: Path = typer.Option(None, "--model", help=MODEL_HELP, show_default=False),
    unet: Path = typer.Option(None, "--unet"),
    vae: Path = typer.Option(None, "--vae"),
    prompts: list[str] = typer.Option(["heldout-single", "heldout-two"], "--prompts",
                                      help="heldout-single | heldout-two | FILE (repeat for several)"),
    steps: int = typer.Option(50, "--steps"),
    guidance: list[str] = typer.Option(["3"], "--guidance", help="one or more: 3 | 1,3,7.5 | 1:10:0.5"),
    scheduler: str = typer.Option("ddim", "--scheduler", help=SCHEDULER_HELP),
    seed: int = typer.Option(0, "--seed"),
    limit: int = typer.Option(None, "--limit", help="only the first N prompts of each set"),
    json_path: Path = typer.Option(None, "--json"),
    save_images: Path = typer.Option(None, "--save-images", help="write every image and an index.json"),
    threads: int = typer.Option(None, "--threads"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP, envvar="POCKETDIFF_BACKEND"),
    protocol: str = typer.Option("heldout", "--protocol", help="heldout (the shapes world's held-out sets and judge) "
                                 "| coco (FID and CLIP score over captions: needs the four options below)"),
    captions: Path = typer.Option(None, "--captions", help="coco: a text file (one caption per line) or COCO's "
                                  "captions_val2014.json"),
    reference_images: Path = typer.Option(None, "--reference-images", help="coco: FID reference, a directory of "
                                          "images or a .safetensors of their statistics (--save-reference-stats)"),
    inception_weights: Path = typer.Option(None, "--inception-weights", help="coco: the TorchScript FID Inception "
                                           "(inception-2015-12-05.pt)"),
    clip_model: Path = typer.Option(None, "--clip-model", help="coco: a transformers CLIP directory"),
    n: int = typer.Option(None, "--n", help="coco: the first N captions [default: all; the papers use 30000]"),
    batch_size: int = typer.Option(16, "--batch-size", help="coco: images generated per batch"),
    save_reference_stats: Path = typer.Option(None, "--save-reference-stats",
                                              help="coco: write the reference's Inception statistics (.safetensors)"),
) -> None:
    """Compositional accuracy, domain FID and domain CLIP score on held-out prompts; or the COCO protocol."""
    model = _model(model)
    from rich.console import Console
    from rich.table import Table

    from pocketdiff.evaluation.suite import evaluate_pipeline, load_prompts
    from pocketdiff.evaluation.sweep import parse_floats

    check_int("--limit", limit, 1)
    check_output_file("--json", json_path, (".json",))
    check_output_dir("--save-images", save_images)
    guidances = parse_floats(guidance)
    _check_sampling(model, steps, guidances, threads)
    if protocol == "coco":
        return _eval_coco(model, unet, vae, steps, guidances, scheduler, seed, json_path, save_images, threads,
                          device, dtype, backend, captions, reference_images, inception_weights, clip_model, n,
                          batch_size, save_reference_stats)
    if protocol != "heldout":
        raise DataError(f"--protocol {protocol!r}: heldout or coco")
    for pset in prompts:
        load_prompts(pset, limit)  # a missing or unreadable prompts file fails now, not after the first set
    pipe = _pipe(model, unet, vae, scheduler, threads, device, dtype, backend)
    results = []
    for pset in prompts:
        for g in guidances:
            sub = None if save_images is None else save_images / f"{Path(pset).stem}_w{g:g}"
            r = evaluate_pipeline(pipe, pset, steps, g, scheduler, seed, limit, clip_model_dir=_clip_dir(model),
                                  save_images=sub)
            results.append(r.as_dict())
    table = Table(title=f"{model} ({'unet ' + str(unet) if unet else 'its own UNet'}), {steps} {scheduler} steps")
    attrs = sorted({a for r in results for a in r["per_attribute"]})
    for col in ["prompts", "w", "n", "accuracy", "novel / seen pairs", *attrs, "FID", "CLIP"]:
        table.add_column(col, justify="right")
    for r in results:
        sub = r["subsets"]
        split = "-" if not sub else " / ".join(
            f"{100 * sub[k]['accuracy']:.0f}% ({sub[k]['n']})" if k in sub else "-" for k in ("novel_pairs", "seen_pairs"))
        table.add_row(r["prompt_set"], f"{r['guidance']:g}", str(r["n"]), f"{100 * r['accuracy']:.1f}%", split,
                      *[f"{100 * r['per_attribute'].get(a, float('nan')):.1f}" for a in attrs],
                      "-" if r["fid"] is None else f"{r['fid']:.2f}",
                      "-" if r["clip_score"] is None else f"{r['clip_score']:.2f}")
    Console().print(table)
    if json_path:
        what = {"model": str(model), "unet": unet and str(unet), "vae": vae and str(vae),  # which weights were judged
                "dtype": pipe.dtype_name, "backend": pipe.backend, "backend_auto": pipe.backend_auto}
        write_json_atomic(json_path, {**what, **(results[0] if len(results) == 1 else {}), "results": results})


def _eval_coco(model, unet, vae, steps, guidances, scheduler, seed, json_path, save_images, threads, device, dtype,
               backend, captions, reference_images, inception_weights, clip_model, n, batch_size, save_stats) -> None:
    """`eval --protocol coco`: FID and CLIP score over N captions, one row per guidance scale."""
    from rich.console import Console
    from rich.table import Table

    from pocketdiff.evaluation.coco import CocoMetrics, evaluate_coco, load_captions

    needed = {"--captions": captions, "--reference-images": reference_images, "--inception-weights": inception_weights,
              "--clip-model": clip_model}
    missing = [k for k, v in needed.items() if v is None]
    if missing:
        raise DataError(f"--protocol coco needs {', '.join(missing)} (see docs/real-path.md)")
    check_int("--n", n, 1)
    check_int("--batch-size", batch_size, 1)
    check_output_file("--save-reference-stats", save_stats, (".safetensors",))
    texts = load_captions(captions, n)
    metrics = CocoMetrics(inception_weights, clip_model, reference_images)  # missing weights fail before generating
    if save_stats is not None:
        metrics.save_stats(save_stats)
    pipe = _pipe(model, unet, vae, scheduler, threads, device, dtype, backend)
    results = evaluate_coco(pipe, texts, metrics, steps, guidances, scheduler, seed, batch_size, save_images)
    table = Table(title=f"COCO protocol: {model} ({'unet ' + str(unet) if unet else 'its own UNet'}), {steps} "
                        f"{scheduler} steps, N = {len(texts)} captions, {metrics.n_reference} reference images")
    for col in ("w", "N", "FID", "CLIP score"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(f"{r['guidance']:g}", str(r["n"]), f"{r['fid']:.2f}", f"{r['clip_score']:.2f}")
    Console().print(table)
    if json_path:
        write_json_atomic(json_path, {"protocol": "coco", "model": str(model), "unet": unet and str(unet),
                                      "captions": str(captions), "reference": str(reference_images),
                                      "inception": str(inception_weights), "clip_model": str(clip_model),
                                      "n": len(texts), "dtype": pipe.dtype_name, "results": results})


def demo(
    model: Path = typer.Option(None, "--model", help=MODEL_HELP, show_default=False),
    n: int = typer.Option(16, "--n", help="held-out prompts per set (single and two objects)"),
    out: Path = typer.Option(Path("out/demo"), "--out", help="report directory (report.md + images)"),
    json_path: Path = typer.Option(None, "--json"),
    threads: int = typer.Option(None, "--threads"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
) -> None:
    """The README's main job: the shipped model on held-out prompts, judged, timed, reported."""
    model = _model(model)
    import torch
    from rich.console import Console
    from rich.table import Table

    from pocketdiff.evaluation.demo import demo_variants, run_demo

    check_int("--n", n, 1, why="held-out prompts per set")
    check_output_dir("--out", out)
    check_output_file("--json", json_path, (".json",))
    variants = demo_variants(model)
    for variant in variants:
        _check_sampling(model, variant["steps"], [variant["guidance"]], threads)
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    rows = run_demo(model, n, out, device=_device(device), dtype=dtype)
    table = Table(title="pocketdiff demo: held-out prompts, per image, this machine")
    for col in ("model", "steps", "w", "accuracy (1 obj / 2 obj)", "FID (1 obj)", "text enc ms", "UNet ms",
                "decoder ms", "total ms"):
        table.add_column(col, justify="right")
    for r in rows:
        lat = r["latency_ms"]
        table.add_row(r["name"], str(r["steps"]), f"{r['guidance']:g}",
                      f"{100 * r['accuracy_single']:.0f}% / {100 * r['accuracy_two']:.0f}%",
                      "-" if r["fid"] is None else f"{r['fid']:.1f}", f"{lat['text_encoder']:.1f}",
                      f"{lat['unet_total']:.0f}", f"{lat['decoder']:.1f}", f"{lat['total']:.0f}")
    Console().print(table)
    typer.echo(f"report: {out / 'report.md'}  ({time.perf_counter() - t_start:.0f} s)")
    if json_path:
        write_json_atomic(json_path, {"models": rows, "n_per_set": n})


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("eval")(eval_cmd)
    app.command("demo")(demo)
