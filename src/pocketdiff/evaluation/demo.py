"""The demo: a model directory's shipped variants (`demo.json`) on held-out prompts, judged, timed, and written
up as `report.md` with image grids (what `pocketdiff demo` runs).

    rows = run_demo(Path("models/shapes"), n=16, out=Path("out/demo"))   # one row per variant
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketdiff.io import write_png_atomic, write_text_atomic
from pocketdiff.training.loop import make_grid


def run_demo(model: Path, n: int, out: Path, device=None, dtype: str = "fp32") -> list[dict]:
    """Each variant of `demo_variants(model)` on the first n prompts of heldout-single and heldout-two (fixed seeds):
    accuracy, FID (single objects), latency per image; images, grids and report.md under `out`. `dtype` "auto":
    each variant's own (its row's `auto_dtype`, fp32 where absent)."""
    from PIL import Image

    from pocketdiff.evaluation.suite import evaluate_pipeline
    from pocketdiff.precision import resolve_dtype
    from pocketdiff.sampling.pipeline import load_pipeline

    rows = []
    for variant in demo_variants(model):
        # each row its own gate: a row marked auto_dtype bf16 passed the bf16 quality gate at its own steps
        dt = resolve_dtype(dtype, device or "cpu", model_default=variant.get("auto_dtype", "fp32"))
        pipe = load_pipeline(model, unet_dir=variant.get("unet"), vae_dir=variant.get("vae"),
                             scheduler=variant["scheduler"], dtype=dt)
        if device is not None:
            pipe = pipe.to(device)
        pipe(["a red circle"], num_inference_steps=2, guidance_scale=variant["guidance"])  # warm-up
        parts = []
        for pset in ("heldout-single", "heldout-two"):
            sub = out / variant["name"] / pset
            parts.append(evaluate_pipeline(pipe, pset, variant["steps"], variant["guidance"], variant["scheduler"],
                                           limit=n, save_images=sub, progress=False))
        acc = sum(p.accuracy * p.n for p in parts) / sum(p.n for p in parts)
        lat = {k: sum(p.latency_ms[k] * p.n for p in parts) / sum(p.n for p in parts) for k in parts[0].latency_ms}
        rows.append({"name": variant["name"], "steps": variant["steps"], "guidance": variant["guidance"], "dtype": dt,
                     "accuracy": acc, "accuracy_single": parts[0].accuracy, "accuracy_two": parts[1].accuracy,
                     "fid": parts[0].fid, "n": sum(p.n for p in parts), "latency_ms": lat})
        for p in parts:
            ims = [np.asarray(Image.open(out / variant["name"] / p.prompt_set / f"{i:05d}.png")) for i in range(p.n)]
            write_png_atomic(out / f"{variant['name']}_{p.prompt_set}.png", make_grid(np.stack(ims), cols=8))
    write_report(out, rows, n)
    return rows


def demo_variants(model: Path) -> list[dict]:
    """The rows of the demo table, from `MODEL/demo.json` (each stage that ships a model adds its row there: name,
    steps, guidance, scheduler, and optionally unet/vae subdirectories); without it, the teacher at 50 DDIM steps."""
    from pocketdiff.errors import DataError
    from pocketdiff.loading import read_json

    index = model / "demo.json"
    if not index.is_file():
        return [{"name": "teacher", "steps": 50, "guidance": 3.0, "scheduler": "ddim"}]
    data = read_json(index)
    if not isinstance(data, list) or not data:
        raise DataError(f"{index}: expected a non-empty list of rows (name, steps, guidance[, scheduler, unet, vae])")
    rows = []
    for i, r in enumerate(data):
        ok = isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"] and \
            isinstance(r.get("steps"), int) and not isinstance(r.get("steps"), bool) and \
            isinstance(r.get("guidance"), int | float) and not isinstance(r.get("guidance"), bool) and \
            all(isinstance(r.get(k), str | None) for k in ("unet", "vae", "scheduler"))
        if not ok:
            raise DataError(f"{index}: row {i} is not a valid demo row ({r!r}); each row needs name (text), steps "
                            "(integer), guidance (number), and optionally scheduler, unet, vae (text)")
        r = {"scheduler": "ddim", **r}
        for k in ("unet", "vae"):
            if r.get(k):
                r[k] = model / r[k]
                if not r[k].is_dir():
                    raise DataError(f"{index}: row {i} ({r['name']}): {k} {r[k]} does not exist")
        rows.append(r)
    return rows


def auto_dtype(model: Path, unet=None, vae=None) -> str:
    """What --dtype auto may use for this UNet + VAE of `model`: "bf16" only if every demo.json row with them says
    `"auto_dtype": "bf16"` (set where the bf16 quality gate passed: docs/results/fast-path/), else "fp32"."""
    def same(a, b):
        return (Path(a).resolve() if a else None) == (Path(b).resolve() if b else None)

    rows = [r for r in demo_variants(model) if same(r.get("unet"), unet) and same(r.get("vae"), vae)]
    return "bf16" if rows and all(r.get("auto_dtype") == "bf16" for r in rows) else "fp32"


def resolve_model_dtype(dtype: str, model: Path, unet=None, vae=None, device="cpu") -> str:
    """--dtype for a pipeline: 'auto' -> bf16 where the device computes bf16 natively and `auto_dtype` allows it,
    else fp32; 'fp32' / 'bf16' as given."""
    from pocketdiff.precision import resolve_dtype

    return resolve_dtype(dtype, device, model_default=auto_dtype(model, unet, vae) if dtype == "auto" else "bf16")


def default_variant(model: Path) -> dict:
    """The demo.json row marked `"default": true` (what `pocketdiff generate` runs when no --unet is given), or {}."""
    return next((r for r in demo_variants(model) if r.get("default")), {})


def write_report(out: Path, rows: list[dict], n: int) -> None:
    lines = ["# pocketdiff demo", "", f"{n} held-out single-object and {n} two-object prompts (never seen in "
             "training), fixed seeds; judged by the rule-based judge. Latency per image on this machine.", "",
             "| model | steps | guidance | accuracy 1 obj | accuracy 2 obj | text encoder ms | UNet ms | decoder ms | total ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(f"| {r['name']} | {r['steps']} | {r['guidance']:g} | {100 * r['accuracy_single']:.0f}% | "
                     f"{100 * r['accuracy_two']:.0f}% | {lat['text_encoder']:.1f} | {lat['unet_total']:.0f} | "
                     f"{lat['decoder']:.1f} | {lat['total']:.0f} |")
    for r in rows:
        for pset in ("heldout-single", "heldout-two"):
            lines += ["", f"## {r['name']}: {pset}", "", f"![{r['name']} {pset}]({r['name']}_{pset}.png)",
                      "", f"Prompts and seeds: `{r['name']}/{pset}/index.json`."]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")


__all__ = ["default_variant", "demo_variants", "run_demo", "write_report"]
