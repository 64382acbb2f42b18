"""Domain FID: Fréchet distance in the feature space of a small CNN trained on the shapes world.

Inception-v3 features describe ImageNet photos, not flat shapes on a plain background, and are slow on a CPU. This
200K-parameter network was trained (`scripts/train_fid_features.py`) to read every attribute of a shapes-world
render (background, which colours are present, each colour's shape, size and centroid) and to name and grade the
degradation of a damaged one (blur, noise, colour shift, warp). So its 128 penultimate features move when a
generator gets the content wrong or the image quality. torchmetrics computes the distance itself, without scipy.
As with any FID, the value between two finite sets of real images is above zero and shrinks like 1/N: compare
numbers computed with the same number of images (about 8 for 500 vs 500 renders, 4 for 1000 vs 1000).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from pocketdiff.data.shapes import BACKGROUNDS, COLORS, SHAPES
from pocketdiff.errors import WeightsError

NUM_FEATURES = 128
IMAGE_SIZE = 64


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesFeatureNet(nn.Module):
    """(N, 3, 64, 64) float images in [-1, 1] -> (N, 128) features. `heads` is used only in training."""

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a 299x299 dummy image
    # Training targets (scripts/train_fid_features.py): background; per colour: present, shape, size, centroid;
    # and which degradation (none, blur, noise, colour, warp) was applied, how strongly.
    num_outputs = len(BACKGROUNDS) + len(COLORS) * (1 + len(SHAPES) + 1 + 2) + 5 + 1

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*_conv(3, 16), *_conv(16, 32), *_conv(32, 64), *_conv(64, 64), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(64 * 4 * 4, NUM_FEATURES), nn.ReLU())
        self.heads = nn.Linear(NUM_FEATURES, self.num_outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.body(images))


def default_weights_path() -> Path:
    return Path(str(resources.files("pocketdiff.assets") / "fid_features.safetensors"))


def load_feature_net(path: str | Path | None = None) -> ShapesFeatureNet:
    """The shipped (or given) FID feature network, in eval mode with gradients off."""
    path = Path(path) if path is not None else default_weights_path()
    net = ShapesFeatureNet()
    try:
        state = load_file(path)
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise WeightsError(f"cannot load FID feature weights from {path}: {e}") from e
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first_line = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise WeightsError(f"{path} does not hold ShapesFeatureNet weights: {first_line}") from e
    return net.eval().requires_grad_(False)


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Accept uint8 images as (N, H, W, 3) numpy / (N, 3, H, W) tensors, or float tensors (N, 3, H, W) in
    [-1, 1] (the convention of every pocketdiff model); return float (N, 3, 64, 64) in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if isinstance(images, np.ndarray):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W) or numpy (N, H, W, 3), got shape {tuple(x.shape)}")
    x = x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float().clamp(-1.0, 1.0)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


class DomainFID:
    """FID with shapes-world features. `update(images, real=...)` any number of times, then `compute()`."""

    def __init__(self, weights: str | Path | None = None, batch_size: int = 256):
        self.batch_size = batch_size
        # A custom feature module receives images untouched by torchmetrics; `to_model_input` prepares them.
        self.metric = FrechetInceptionDistance(feature=load_feature_net(weights))

    def update(self, images: np.ndarray | torch.Tensor, real: bool) -> None:
        x = to_model_input(images)
        for chunk in x.split(self.batch_size):
            self.metric.update(chunk, real=real)

    def compute(self) -> float:
        return float(self.metric.compute())

    def reset(self) -> None:
        self.metric.reset()


def domain_fid(real_images: np.ndarray | torch.Tensor, fake_images: np.ndarray | torch.Tensor) -> float:
    """FID between two image sets (each at least 2 images; a few hundred or more for a stable number)."""
    fid = DomainFID()
    fid.update(real_images, real=True)
    fid.update(fake_images, real=False)
    return fid.compute()
