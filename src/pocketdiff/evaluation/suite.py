"""Evaluate a text-to-image pipeline on a prompt set: compositional accuracy (the judge), domain FID, domain CLIP score.

Held-out prompt sets (`heldout-single`, `heldout-two`) come from `pocketdiff.data.shapes` and are never produced by
the training stream. Seeds are fixed (image i uses seed `seed + i`), so two models are compared on the same noise.
FID's real side is the ground-truth renders of the same held-out scenes (jitter seeded separately).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import write_json_atomic, write_png_atomic

PROMPT_SETS = ("heldout-single", "heldout-two")


def load_prompts(name_or_file: str, limit: int | None = None) -> tuple[list[str], list]:
    """A named held-out set or a text file with one prompt per line. Returns (prompts, scenes or Nones)."""
    from ..data.shapes import heldout_prompts

    if name_or_file in PROMPT_SETS:
        pairs = heldout_prompts(name_or_file)
        prompts, scenes = [p for p, _ in pairs], [s for _, s in pairs]
    else:
        from ..loading import read_lines

        path = Path(name_or_file)
        if not path.is_file():
            raise DataError(f"--prompts {name_or_file!r} is neither a prompt set ({', '.join(PROMPT_SETS)}) nor a file")
        prompts = read_lines(path, "--prompts")
        if not prompts:
            raise DataError(f"{path} has no prompts (one per line)")
        scenes = [None] * len(prompts)
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit {limit}: must be >= 1 (the number of prompts to use)")
        prompts, scenes = prompts[:limit], scenes[:limit]
    return prompts, scenes


def real_images(scenes: list, seed: int = 12345) -> np.ndarray | None:
    """Ground-truth renders of the prompt set's scenes (the FID reference), or None for a user prompt file."""
    from ..data.shapes import render

    if any(s is None for s in scenes):
        return None
    rng = np.random.default_rng(seed)
    return np.stack([render(s, 64, rng) for s in scenes])


@dataclass
class EvalResult:
    prompt_set: str
    steps: int
    guidance: float
    scheduler: str
    n: int
    accuracy: float
    per_attribute: dict
    fid: float | None
    clip_score: float | None
    latency_ms: dict = field(default_factory=dict)  # per image: text_encoder, unet_total, decoder, total
    # accuracy on the held-out scenes with a colour-shape pair training never shows ("novel_pairs") and on the rest
    subsets: dict = field(default_factory=dict)
    seed: int = 0  # prompt i was sampled with seed + i
    correct: list[int] = field(default_factory=list)  # the judge's verdict per prompt (1 correct): for paired tests

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sample_prompts(pipe, prompts: list[str], steps: int, guidance: float, *, scheduler: str | None = None,
                   seed: int = 0, batch_size: int = 50, decode: bool = True, desc: str | None = None):
    """The pipeline over `prompts` in chunks of `batch_size`, prompt i with seed `seed + i` (so every evaluation and
    benchmark sees the same image, or latent with decode=False, for the same prompt); yields each chunk's output."""
    chunks = range(0, len(prompts), batch_size)
    if desc:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc, leave=False)
    for i in chunks:
        yield pipe(prompts[i:i + batch_size], num_inference_steps=steps, guidance_scale=guidance, scheduler=scheduler,
                   seed=[seed + j for j in range(i, min(i + batch_size, len(prompts)))], decode=decode)


def evaluate_pipeline(pipe, prompt_set: str = "heldout-single", steps: int = 50, guidance: float = 3.0,
                      scheduler: str = "ddim", seed: int = 0, limit: int | None = None, batch_size: int = 50,
                      clip_model_dir: str | Path | None = None, save_images: str | Path | None = None,
                      progress: bool = True) -> EvalResult:
    from ..evaluation.judge import evaluate as judge_all

    prompts, scenes = load_prompts(prompt_set, limit)
    images, timings = [], []
    for gen in sample_prompts(pipe, prompts, steps, guidance, scheduler=scheduler, seed=seed, batch_size=batch_size,
                              desc=f"{prompt_set} {steps} steps w={guidance}" if progress else None):
        images.append(gen.images)
        timings.append((len(gen.images), gen.timings.as_dict()))
    images = np.concatenate(images)
    n = len(images)
    latency = {k: sum(t[k] for _, t in timings) / n for k in timings[0][1]}

    judged = judge_all(list(images), prompts)
    subsets = {}
    if all(s is not None for s in scenes):
        from ..data.shapes import HELDOUT_PAIRS

        novel = np.array([any((o.color, o.shape) in HELDOUT_PAIRS for o in s.objects) for s in scenes])
        correct = np.array(judged["correct"])
        for name, mask in (("novel_pairs", novel), ("seen_pairs", ~novel)):
            if mask.any():
                subsets[name] = {"n": int(mask.sum()), "accuracy": float(correct[mask].mean())}
    real = real_images(scenes)
    fid = None
    if real is not None and n >= 2:  # FID needs two images or more on each side; one image gets none
        from ..evaluation.fid import domain_fid

        fid = float(domain_fid(real, images))
    clip = None
    if clip_model_dir is not None and (Path(clip_model_dir) / "clip_image").is_dir():
        from ..evaluation.clip_score import clip_score

        clip = float(clip_score(images, prompts, clip_model_dir))
    if save_images is not None:
        save_image_folder(images, prompts, [seed + i for i in range(n)], Path(save_images))
    return EvalResult(prompt_set=prompt_set, steps=steps, guidance=guidance, scheduler=scheduler, n=n,
                      accuracy=judged["accuracy"], per_attribute=judged["per_attribute"], fid=fid, clip_score=clip,
                      latency_ms=latency, subsets=subsets, seed=seed, correct=[int(c) for c in judged["correct"]])


def paired_change(new, ref) -> dict:
    """Accuracy change new - ref between two lists of 0/1 verdicts on the same prompts and seeds (only the model,
    sampler or decoder differs), with a 95% interval from the per-image differences (normal approximation). Pairing
    cancels what the prompt and the seed decide, so it resolves changes that two independent accuracies cannot."""
    if len(new) != len(ref) or len(new) < 2:
        raise ValueError(f"paired_change needs two equally long lists of >= 2 verdicts, got {len(new)} and {len(ref)}")
    d = np.asarray(new, float) - np.asarray(ref, float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    return {"change": float(d.mean()), "change_ci95": [float(d.mean() - half), float(d.mean() + half)],
            "lost": int((d < 0).sum()), "gained": int((d > 0).sum()), "n": len(d)}


def save_image_folder(images: np.ndarray, prompts: list[str], seeds: list[int], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for i, (im, p, s) in enumerate(zip(images, prompts, seeds)):
        name = f"{i:05d}.png"
        write_png_atomic(out / name, im)
        index[name] = {"prompt": p, "seed": s}
    write_json_atomic(out / "index.json", index)
