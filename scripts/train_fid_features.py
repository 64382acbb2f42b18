"""Train the shapes-world FID feature network and write src/pocketdiff/assets/fid_features.safetensors.

The network learns to read every attribute of a render (the background, which colours are present and, for each
present colour, its object's shape, size and centroid) and to tell a clean render from one that is blurred, noisy,
colour-shifted or warped, and how strongly: the ways a generator's samples go wrong. Whatever it needs for that
ends up in its 128 penultimate features, which `pocketdiff.evaluation.fid.DomainFID` compares. A few minutes on
one CPU core:

    python scripts/train_fid_features.py            # defaults reproduce the shipped weights
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pocketdiff.data.shapes import BACKGROUNDS, COLORS, SHAPES, layout, render, sample_scene, to_tensor
from pocketdiff.evaluation.fid import ShapesFeatureNet

NB, NC, NS = len(BACKGROUNDS), len(COLORS), len(SHAPES)
DEGRADATIONS = ("clean", "blur", "noise", "color", "warp")
SPLITS = [NB, NC, NC * NS, NC, NC * 2, len(DEGRADATIONS), 1]  # the heads' outputs, in order
COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}


def make_example(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A render of any scene (held-out ones too: the features must know them) and its per-colour targets."""
    scene = sample_scene(rng, 1 + int(rng.integers(2)), split="all")
    placement = layout(scene, rng)
    target = {
        "background": list(BACKGROUNDS).index(scene.background),
        "present": np.zeros(NC, np.float32),
        "shape": np.full(NC, -100, np.int64),  # cross_entropy's ignore_index where the colour is absent
        "large": np.zeros(NC, np.float32),
        "xy": np.zeros((NC, 2), np.float32),
    }
    for o, (cx, cy, _) in zip(scene.objects, placement):
        c = COLOR_INDEX[o.color]
        target["present"][c] = 1.0
        target["shape"][c] = SHAPES.index(o.shape)
        target["large"][c] = float(o.size == "large")
        target["xy"][c] = (cx / 32 - 1, cy / 32 - 1)
    return render(scene, 64, placement=placement), target


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.exp(-0.5 * (torch.arange(-3, 4.0) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).expand(3, 1, 1, 7), groups=3)
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).expand(3, 1, 7, 1), groups=3)


def degrade(x: torch.Tensor, kind: str, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """One image (1, 3, H, W) in [-1, 1], degraded by `kind` at `strength` in [0, 1]."""
    if kind == "blur":
        x = _blur(x, 0.3 + 1.2 * strength)
    elif kind == "noise":
        seed = int(rng.integers(2**31))
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * (25 * strength / 127.5)
    elif kind == "color":
        direction = torch.as_tensor(rng.normal(size=(2, 3)), dtype=torch.float32)
        gain, offset = (0.2 * strength * direction / direction.norm(dim=1, keepdim=True)).view(2, 1, 3, 1, 1)
        x = (x + 1) * (1 + gain) - 1 + offset
    elif kind == "warp":
        direction = torch.as_tensor(rng.normal(size=(2, 2)), dtype=torch.float32)
        theta = torch.eye(2, 3)
        theta[:, :2] += 0.25 * strength * direction / direction.norm()
        grid = F.affine_grid(theta[None], list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # back on the uint8 grid, like real images


def make_batch(rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Half the batch clean, half degraded one way or another; all with their attribute targets."""
    examples = [make_example(rng) for _ in range(batch_size)]
    images = to_tensor(np.stack([im for im, _ in examples]))
    targets = {k: torch.as_tensor(np.stack([t[k] for _, t in examples])) for k in examples[0][1]}
    kinds = np.where(rng.random(batch_size) < 0.5, 0, rng.integers(1, len(DEGRADATIONS), batch_size))
    strengths = np.where(kinds > 0, rng.uniform(0.1, 1.0, batch_size), 0.0).astype(np.float32)
    for i in np.nonzero(kinds)[0]:
        images[i : i + 1] = degrade(images[i : i + 1], DEGRADATIONS[kinds[i]], float(strengths[i]), rng)
    targets["degradation"] = torch.as_tensor(kinds)
    targets["strength"] = torch.as_tensor(strengths)
    return images, targets


def loss_fn(out: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    bg, present, shape, large, xy, kind, strength = out.split(SPLITS, dim=1)
    mask = t["present"]
    losses = {
        "degradation": F.cross_entropy(kind, t["degradation"]),
        "strength": 3 * F.mse_loss(strength.squeeze(1), t["strength"]),
        "background": F.cross_entropy(bg, t["background"]),
        "present": F.binary_cross_entropy_with_logits(present, mask),
        "shape": F.cross_entropy(shape.reshape(-1, NS), t["shape"].reshape(-1), ignore_index=-100),
        "size": (F.binary_cross_entropy_with_logits(large, t["large"], reduction="none") * mask).sum() / mask.sum(),
        "xy": 10 * ((xy.reshape(-1, NC, 2) - t["xy"]).square().sum(-1) * mask).sum() / mask.sum(),
    }
    return sum(losses.values()), {k: v.item() for k, v in losses.items()}


@torch.no_grad()
def accuracy(net: ShapesFeatureNet, rng: np.random.Generator, n: int = 1024) -> dict[str, float]:
    images, t = make_batch(rng, n)
    out = net.heads(net(images))
    bg, present, shape, large, xy, kind, strength = out.split(SPLITS, dim=1)
    mask = t["present"].bool()
    return {
        "strength_err": (strength.squeeze(1) - t["strength"]).abs().mean().item(),
        "degradation": (kind.argmax(1) == t["degradation"]).float().mean().item(),
        "background": (bg.argmax(1) == t["background"]).float().mean().item(),
        "present": ((present > 0) == mask).all(1).float().mean().item(),
        "shape": (shape.reshape(-1, NC, NS).argmax(-1) == t["shape"])[mask].float().mean().item(),
        "size": ((large > 0).float() == t["large"])[mask].float().mean().item(),
        "xy_err_px": ((xy.reshape(-1, NC, 2) - t["xy"]).abs() * 32)[mask].mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    default_out = Path(__file__).resolve().parents[1] / "src/pocketdiff/assets/fid_features.safetensors"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = ShapesFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    print(f"{sum(p.numel() for p in net.parameters()):,} parameters")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        images, targets = make_batch(rng, args.batch_size)
        loss, parts = loss_fn(net.heads(net(images)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            detail = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
            print(f"step {step} loss {loss.item():.3f} ({detail}) {time.perf_counter() - start:.0f}s", flush=True)
    net.eval()
    check = accuracy(net, np.random.default_rng(10_000 + args.seed))
    print("fresh-sample check:", {k: round(v, 4) for k, v in check.items()})
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, args.out, metadata={"steps": str(args.steps), "seed": str(args.seed)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
