"""The COCO protocol of the papers (SnapFusion, MobileDiffusion, BK-SDM): generate one image per caption, then FID
against the reference images in Inception-v3 features, and CLIP score, for each guidance scale.

    captions = load_captions("captions_val2014.json", n=30000)      # or a text file, one caption per line
    metrics = CocoMetrics("inception-2015-12-05.pt", "clip-vit-large-patch14/", reference="val2014/")
    metrics.add(images, captions); metrics.result()   # {"fid": ..., "clip_score": ..., "n": ...}

FID: torchmetrics' `FrechetInceptionDistance` with the Inception given as a file: the TorchScript network of the FID
literature, `inception-2015-12-05.pt` (StyleGAN2-ADA's and clean-fid's; TF Inception 2015-12-05 weights), called as
they call it: uint8 [N, 3, H, W] in, 2048 pool features out (`return_features=True`; it resizes to 299 itself).
torch-fidelity, torchmetrics' default extractor, is not used: its package imports torchvision, and PyPI's torchvision
does not match this project's torch (installing torch-fidelity without it makes `torchmetrics.image.fid` fail to
import at all). TorchScript archives load through TorchScript's own restricted unpickler (tensors and TorchScript
code, no arbitrary Python objects).

CLIP score: 100 x max(cos(image, caption), 0) averaged (torchmetrics' definition, Hessel et al. 2021) with a
transformers `CLIPModel` directory (SnapFusion reports ViT-g/14; `laion/CLIP-ViT-g-14-laion2B-s12B-b42K` and
`openai/clip-vit-large-patch14` are transformers directories).

Reference: a directory of images (their features are computed and can be saved with `save_stats`), or a
`.safetensors` of statistics saved that way ({"mu", "sigma", "n"}), so 30K reference images are read once.
FID depends on N (it falls like 1/N for two samples of the same distribution): the N used is in every result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pocketdiff.errors import DataError, WeightsError

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_captions(path: str | Path, n: int | None = None) -> list[str]:
    """The first `n` captions of a text file (one per line) or of a COCO annotation file (`captions_val2014.json`:
    one caption per image, the first listed for each image id, in image-id order)."""
    from pocketdiff.loading import read_json, read_lines

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--captions {path}: no such file (a text file, one caption per line, or COCO's "
                        "captions_val2014.json)")
    if path.suffix == ".json":
        data = read_json(path, "--captions")
        try:
            first: dict = {}
            for a in data["annotations"]:
                first.setdefault(a["image_id"], a["caption"].strip())
        except (TypeError, KeyError, AttributeError):
            raise DataError(f"--captions {path}: not a COCO caption file (expected annotations: [{{image_id, "
                            "caption}}])") from None
        captions = [first[k] for k in sorted(first)]
    else:
        captions = read_lines(path, "--captions")
    if not captions:
        raise DataError(f"--captions {path}: no captions")
    if n is not None:
        if n < 1:
            raise DataError(f"--n {n}: must be >= 1")
        if n > len(captions):
            raise DataError(f"--n {n}: {path} has only {len(captions)} captions")
        captions = captions[:n]
    return captions


class _Inception(torch.nn.Module):
    """The TorchScript FID Inception as torchmetrics' `feature` module: uint8 images in, pool features out."""

    def __init__(self, path: Path):
        super().__init__()
        import warnings

        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the FID Inception is distributed in it
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - torch.jit raises RuntimeError / ValueError for a bad archive
            raise WeightsError(f"--inception-weights {path}: not a TorchScript Inception ({' '.join(str(e).split())[:200]}); "
                               f"download {INCEPTION_URL}") from None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, return_features=True).double()


def load_inception(path: str | Path) -> _Inception:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--inception-weights {path}: no such file. FID needs the Inception-v3 of the FID "
                           f"literature as TorchScript: download {INCEPTION_URL} (92 MB) and pass its path")
    return _Inception(path)


class CLIPScorer:
    """CLIP score per (image, caption) pair with a local transformers CLIP: 100 x max(cos, 0) (torchmetrics'
    definition, Hessel et al. 2021). `CLIPScorer(DIR)(images, captions)` -> list of floats."""

    def __init__(self, directory: str | Path):
        self.model, self.processor = load_clip_model(directory)

    @torch.no_grad()
    def __call__(self, images, captions: list[str]) -> list[float]:
        inputs = self.processor(text=list(captions), images=list(images), return_tensors="pt", padding=True,
                                truncation=True)
        out = self.model(**inputs)  # projected embeddings (image_embeds, text_embeds), unit norm
        return (100 * (out.image_embeds * out.text_embeds).sum(-1).clamp(min=0)).tolist()


def load_clip_model(directory: str | Path):
    """(CLIPModel, CLIPProcessor) from a local transformers CLIP directory."""
    from transformers import CLIPModel, CLIPProcessor

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise WeightsError(f"--clip-model {directory}: not a CLIP model directory (no config.json). Download one, "
                           "e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR`")
    try:
        return CLIPModel.from_pretrained(str(directory)).eval(), CLIPProcessor.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"--clip-model {directory}: cannot be loaded ({' '.join(str(e).split())[:300]})") from None


REFERENCE_SIZE = 299  # the Inception's input: reference images are centre-cropped square and resized to it


def reference_batches(directory: str | Path, batch_size: int, counts: dict):
    """The images of a directory (sorted by name) in batches of [N, 3, 299, 299] uint8: each centre-cropped square
    and resized (bicubic), read one batch at a time (40K COCO images never sit in memory together). Unreadable files
    are skipped and counted in `counts["skipped"]`, read ones in `counts["n"]`."""
    from PIL import Image, UnidentifiedImageError

    from pocketdiff.data.folder import center_crop

    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for i in range(0, len(files), batch_size):
        batch = []
        for p in files[i:i + batch_size]:
            try:
                with Image.open(p) as im:
                    batch.append(center_crop(im.convert("RGB"), REFERENCE_SIZE))
            except (UnidentifiedImageError, OSError):
                counts["skipped"] += 1
        counts["n"] += len(batch)
        if batch:
            yield _uint8_batch(batch)


def _uint8_batch(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Same-size HxWx3 uint8 images -> [N, 3, H, W] uint8 (the Inception resizes them to 299 itself)."""
    return torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).contiguous()


class CocoMetrics:
    """FID (against a reference directory or saved statistics) and CLIP score of generated images and their captions."""

    def __init__(self, inception: str | Path, clip_model: str | Path, reference: str | Path,
                 batch_size: int = 32):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.batch_size = batch_size
        reference = Path(reference)
        if not reference.exists():
            raise DataError(f"--reference-images {reference}: no such directory or statistics file")
        self.fid = FrechetInceptionDistance(feature=load_inception(inception), reset_real_features=False)
        self.clip = CLIPScorer(clip_model)
        self.clip_scores: list[float] = []
        self.reference_skipped = 0
        if reference.is_dir():
            counts = {"n": 0, "skipped": 0}
            for batch in reference_batches(reference, batch_size, counts):
                self.fid.update(batch, real=True)
            if counts["n"] < 2:
                raise DataError(f"--reference-images {reference}: {counts['n']} readable image(s); FID needs >= 2")
            self.n_reference, self.reference_skipped = counts["n"], counts["skipped"]
        else:
            self._load_stats(reference)

    def _load_stats(self, path: Path) -> None:
        from pocketdiff.loading import load_safetensors

        stats = load_safetensors(path)
        if not {"mu", "sigma", "n"} <= set(stats):
            raise DataError(f"--reference-images {path}: not a statistics file (needs mu, sigma, n: write one with "
                            "--save-reference-stats)")
        mu, sigma, n = stats["mu"].double(), stats["sigma"].double(), int(stats["n"])
        if mu.shape[0] != self.fid.real_features_sum.shape[0]:
            raise DataError(f"--reference-images {path}: statistics of {mu.shape[0]} features, this Inception gives "
                            f"{self.fid.real_features_sum.shape[0]}")
        self.fid.real_features_sum = mu * n  # torchmetrics' running sums, from the mean and the (n - 1) covariance
        self.fid.real_features_cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
        self.fid.real_features_num_samples = torch.tensor(n)
        self.n_reference = n

    def save_stats(self, path: str | Path) -> None:
        """The reference's Inception statistics, to pass as --reference-images next time."""
        from safetensors.torch import save_file

        from pocketdiff.io import atomic_path

        n = int(self.fid.real_features_num_samples)
        mu = self.fid.real_features_sum / n
        sigma = (self.fid.real_features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
        with atomic_path(path) as tmp:
            save_file({"mu": mu, "sigma": sigma, "n": torch.tensor(n)}, str(tmp))

    @torch.no_grad()
    def add(self, images: np.ndarray, captions: list[str]) -> None:
        batch = _uint8_batch(list(images))
        self.fid.update(batch, real=False)
        self.clip_scores += self.clip(images, captions)

    def result(self) -> dict:
        n = len(self.clip_scores)
        if n < 2:
            raise DataError(f"FID needs >= 2 generated images, got {n}: use a larger --n")
        return {"fid": float(self.fid.compute()), "clip_score": float(np.mean(self.clip_scores)), "n": n,
                "n_reference": self.n_reference, "reference_unreadable": self.reference_skipped}

    def reset_generated(self) -> None:
        self.fid.reset()  # reset_real_features=False: the reference stays
        self.clip_scores = []


def evaluate_coco(pipe, captions: list[str], metrics: CocoMetrics, steps: int, guidances: list[float],
                  scheduler: str | None = None, seed: int = 0, batch_size: int = 16, save_images: Path | None = None):
    """One result per guidance scale (a sweep), the same captions and seeds (caption i, seed + i) for each."""
    from pocketdiff.evaluation.suite import sample_prompts, save_image_folder

    results = []
    for g in guidances:
        metrics.reset_generated()
        kept = [] if save_images is not None else None
        for i, gen in enumerate(sample_prompts(pipe, captions, steps, g, scheduler=scheduler, seed=seed,
                                               batch_size=batch_size, desc=f"coco w={g:g}")):
            metrics.add(gen.images, captions[i * batch_size: i * batch_size + len(gen.images)])
            if kept is not None:
                kept.append(gen.images)
        if kept is not None:
            save_image_folder(np.concatenate(kept), captions, [seed + i for i in range(len(captions))],
                              save_images / f"w{g:g}")
        results.append({"guidance": g, "steps": steps, "scheduler": scheduler, "seed": seed, **metrics.result()})
    return results


__all__ = ["CLIPScorer", "CocoMetrics", "INCEPTION_URL", "evaluate_coco", "load_captions", "load_clip_model", "load_inception"]
