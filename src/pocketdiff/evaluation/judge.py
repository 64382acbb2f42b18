"""An exact, rule-based judge for the shapes world (GenEval-style compositional accuracy, no learned scorer).

`parse_prompt` reads a caption back into attributes; `detect_objects` segments an image by nearest palette colour,
splits it into connected blobs and measures each blob's shape, size, position and centroid; `judge` matches blobs
to the prompt's objects and reports one boolean per attribute the prompt names. Thresholds sit halfway between the
renderer's attribute ranges, so slightly blurred or colour-shifted generated images are still read correctly.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocketdiff.data.shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPE_AREA,
    SHAPES,
    SIZES,
    VOCABULARY,
    coverage,
)
from pocketdiff.errors import DataError

ATTRIBUTES = ("count", "color", "shape", "size", "position", "relation", "background")

# Words that locate a single object. "top" and "left"/"right" also start relations ("on top of", "left of").
_POSITION_WORDS = {w: w for w in ("left", "right", "top", "bottom", "center")} | {"middle": "center"}
_RELATION_WORDS = {"above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}

# Detection thresholds, in units of a 64 px canvas.
COLOR_TOLERANCE = 80.0  # max RGB distance from a palette colour for a pixel to count as that colour
MIN_AREA = 20.0  # smaller blobs are specks, not objects
LARGE_HALF_EXTENT = 9.75  # between small (6-8) and large (11.5-13.5) half-extents
CENTER_RADIUS = 8.0  # halfway between the center (32) and the side positions (16 / 48)


@dataclass(frozen=True)
class ParsedObject:
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    objects: tuple[ParsedObject, ...] = ()
    relation: str | None = None  # objects[0] <relation> objects[1]
    background: str | None = None


@dataclass(frozen=True)
class DetectedObject:
    shape: str
    color: str
    size: str
    position: str
    centroid: tuple[float, float]  # (x, y) on a 64-unit canvas, y down
    area: float  # pixels on a 64-unit canvas
    shape_score: float = field(default=0.0, compare=False)  # 1 - mismatch with the best-fitting shape


# -------------------------------------------------------------------------------------------------- parsing


def _find_relation(tokens: list[str]) -> tuple[int, int, str] | None:
    """(start, end, relation) of the first relation phrase in `tokens`, or None."""
    for i, t in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if t in ("left", "right") and nxt == "of":
            return i, i + 2, f"{t} of"
        if t == "on" and tokens[i + 1 : i + 3] == ["top", "of"]:
            return i, i + 3, "above"
        if t in _RELATION_WORDS:
            return i, i + 1, _RELATION_WORDS[t]
    return None


def _parse_object(tokens: list[str]) -> tuple[ParsedObject | None, str | None]:
    """The object named by a chunk of tokens (None if it names none) and a background colour if one is named."""
    found: dict[str, str] = {}
    background = None
    for t in tokens:
        if t in SHAPES:
            found["shape"] = t
        elif t in COLORS:
            found["color"] = t
        elif t in SIZES:
            found["size"] = t
        elif t in BACKGROUNDS:
            background = t
        elif t in _POSITION_WORDS:
            found["position"] = _POSITION_WORDS[t]
    if "shape" not in found and "color" not in found:
        return None, background
    return ParsedObject(**found), background


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Read a shapes-world caption back into attributes. Unknown words are ignored with a warning."""
    tokens = re.findall(r"[a-z]+", prompt.lower())
    unknown = sorted(set(tokens) - set(VOCABULARY))
    if unknown:
        warnings.warn(f"ignoring words outside the shapes vocabulary: {', '.join(unknown)}", stacklevel=2)
    found = _find_relation(tokens)
    chunks = [tokens] if found is None else [tokens[: found[0]], tokens[found[1] :]]
    objects, backgrounds = [], []
    for chunk in chunks:
        obj, background = _parse_object(chunk)
        if obj is not None:
            objects.append(obj)
        if background is not None:
            backgrounds.append(background)
    relation = found[2] if found is not None and len(objects) == 2 else None
    return ParsedPrompt(tuple(objects), relation, backgrounds[-1] if backgrounds else None)


# ------------------------------------------------------------------------------------------------- detection


_PALETTE = np.array([*COLORS.values(), *BACKGROUNDS.values()], np.float32)
_PALETTE_NAMES = [*COLORS, *BACKGROUNDS]


def _components(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """8-connected components of equal `labels` inside `mask`, numbered from 0 (-1 outside the mask). Union-find
    over horizontal runs: a few hundred runs per image, so plain Python is fast enough and needs no scipy."""
    lab = np.where(mask, labels, -1)
    runs: list[tuple[int, int, int, int]] = []  # (row, start, end, label)
    parent: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []
    for y in np.flatnonzero(mask.any(axis=1)):
        row = lab[y]
        bounds = [0, *(np.flatnonzero(row[1:] != row[:-1]) + 1).tolist(), len(row)]
        if previous and runs[previous[0]][0] != y - 1:
            previous = []
        current = []
        for x0, x1 in zip(bounds[:-1], bounds[1:]):
            label = int(row[x0])
            if label < 0:
                continue
            i = len(runs)
            runs.append((int(y), x0, x1, label))
            parent.append(i)
            current.append(i)
            for j in previous:  # touching the run above, diagonals included
                _, px0, px1, plabel = runs[j]
                if plabel == label and px0 <= x1 and x0 <= px1:
                    parent[root(i)] = root(j)
        previous = current
    comp = np.full(mask.shape, -1)
    ids: dict[int, int] = {}
    for i, (y, x0, x1, _) in enumerate(runs):
        comp[y, x0:x1] = ids.setdefault(root(i), len(ids))
    return comp


def _fit_shape(alpha: np.ndarray) -> tuple[str, float, float]:
    """Analysis by synthesis: place each shape at the blob's centroid with the half-extent its area implies, and
    keep the one whose rendered coverage differs least from the observed coverage `alpha` (an (h, w) window).
    Returns (shape, half-extent in pixels, score = 1 - L1 mismatch / area, 1 for a perfect fit)."""
    mass = float(alpha.sum())
    ys, xs = np.indices(alpha.shape, dtype=np.float32) + 0.5
    cx, cy = float((alpha * xs).sum()) / mass, float((alpha * ys).sum()) / mass
    fits = []
    for shape in SHAPES:
        r = (mass / SHAPE_AREA[shape]) ** 0.5
        mismatch = np.abs(coverage(shape, cx, cy, r, alpha.shape, supersample=4) - alpha).sum() / mass
        fits.append((float(mismatch), shape, r))
    mismatch, shape, r = min(fits)
    return shape, r, 1.0 - mismatch


def _position(cx: float, cy: float) -> str:
    dx, dy = cx - 32.0, cy - 32.0
    if max(abs(dx), abs(dy)) < CENTER_RADIUS:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _nearest_palette(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette colour per pixel, and the distance to it."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    x = image.reshape(-1, 3).astype(np.float32)
    sq = (x * x).sum(1, keepdims=True) - 2 * x @ _PALETTE.T + (_PALETTE * _PALETTE).sum(1)
    labels = sq.argmin(1)
    dist = np.sqrt(np.maximum(sq[np.arange(len(x)), labels], 0))
    return labels.reshape(image.shape[:2]), dist.reshape(image.shape[:2])


def detect_background(image: np.ndarray) -> str:
    """The background palette colour most common in the image."""
    labels, _ = _nearest_palette(image)
    counts = np.bincount(labels.ravel(), minlength=len(_PALETTE_NAMES))
    return list(BACKGROUNDS)[int(np.argmax(counts[len(COLORS) :]))]


def _alpha(image: np.ndarray, color: str, background: np.ndarray) -> np.ndarray:
    """Per-pixel coverage by `color` over `background`: the pixel's projection onto the line between them."""
    c = np.asarray(COLORS[color], np.float32) - background
    return np.clip((image.astype(np.float32) - background) @ c / float(c @ c), 0.0, 1.0)


def detect_objects(image: np.ndarray) -> list[DetectedObject]:
    """Coloured blobs in a uint8 (H, W, 3) image, largest first. The background is the most common palette
    colour; pixels far from every palette colour (anti-aliased edges, artefacts) seed no blob but count towards
    the coverage of the blob beside them."""
    h, w = image.shape[:2]
    scale = 64.0 / w
    labels, dist = _nearest_palette(image)
    background = np.bincount(labels.ravel(), minlength=len(_PALETTE)).argmax()
    mask = (labels < len(COLORS)) & (labels != background) & (dist < COLOR_TOLERANCE)
    comp = _components(labels, mask)
    areas = np.bincount(comp[mask])
    objects = []
    for blob in np.flatnonzero(areas * scale * scale >= MIN_AREA):
        ys, xs = np.nonzero(comp == blob)
        color = _PALETTE_NAMES[labels[ys[0], xs[0]]]
        y0, y1 = max(0, ys.min() - 2), min(h, ys.max() + 3)  # margin: the blob's anti-aliased rim
        x0, x1 = max(0, xs.min() - 2), min(w, xs.max() + 3)
        window = comp[y0:y1, x0:x1]
        alpha = _alpha(image[y0:y1, x0:x1], color, _PALETTE[background])
        alpha[(window >= 0) & (window != blob)] = 0.0  # other blobs are not part of this one
        mass = float(alpha.sum())
        if mass < 1.0:  # a colour barely distinguishable from this background
            continue
        shape, r, score = _fit_shape(alpha)
        cx = (float((alpha * (np.arange(x0, x1) + 0.5)).sum()) / mass) * scale
        cy = (float((alpha * (np.arange(y0, y1)[:, None] + 0.5)).sum()) / mass) * scale
        objects.append(
            DetectedObject(
                shape=shape,
                color=color,
                size="large" if r * scale > LARGE_HALF_EXTENT else "small",
                position=_position(cx, cy),
                centroid=(cx, cy),
                area=mass * scale * scale,
                shape_score=score,
            )
        )
    return sorted(objects, key=lambda o: -o.area)


# ---------------------------------------------------------------------------------------------------- judging


def relation_holds(a: DetectedObject, b: DetectedObject, relation: str) -> bool:
    """`a <relation> b` by centroids: the displacement must point the right way and dominate the other axis."""
    dx, dy = b.centroid[0] - a.centroid[0], b.centroid[1] - a.centroid[1]
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along > abs(across)


def _match(prompt: ParsedPrompt, detected: list[DetectedObject]) -> list[DetectedObject | None]:
    """Assign distinct detections to the prompt's objects, maximising agreement on colour and shape first,
    then size and position; ties go to the larger blobs (they come first)."""

    def score(p: ParsedObject, d: DetectedObject) -> int:
        return sum(
            weight * (getattr(p, attr) == getattr(d, attr))
            for attr, weight in (("color", 4), ("shape", 4), ("size", 1), ("position", 1))
            if getattr(p, attr) is not None
        )

    n = len(prompt.objects)
    padded: list[DetectedObject | None] = [*detected, *[None] * n]
    best, best_score = None, -1
    for combo in itertools.permutations(padded, n):
        total = sum(score(p, d) for p, d in zip(prompt.objects, combo) if d is not None)
        if total > best_score:
            best, best_score = list(combo), total
    return best


def judge(image: np.ndarray, prompt: str | ParsedPrompt) -> dict[str, bool]:
    """Check one image against one prompt: a boolean per attribute the prompt names (of `ATTRIBUTES`; "count"
    always) and "correct" when all of them hold."""
    parsed = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if not parsed.objects:
        raise DataError(f"the prompt {prompt!r} names no object (no shape or colour word)")
    detected = detect_objects(image)
    matched = _match(parsed, detected)
    result = {"count": len(detected) == len(parsed.objects)}
    for attr in ("color", "shape", "size", "position"):
        named = [(p, d) for p, d in zip(parsed.objects, matched) if getattr(p, attr) is not None]
        if named:
            result[attr] = all(d is not None and getattr(d, attr) == getattr(p, attr) for p, d in named)
    if parsed.relation is not None:
        a, b = matched
        result["relation"] = a is not None and b is not None and relation_holds(a, b, parsed.relation)
    if parsed.background is not None:
        result["background"] = detect_background(image) == parsed.background
    result["correct"] = all(result.values())
    return result


def evaluate(images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict:
    """Judge many images: {"accuracy": all-correct fraction, "per_attribute": {attr: accuracy}, "n": count,
    "correct": per-image verdicts}."""
    if len(images) != len(prompts):
        raise DataError(f"got {len(images)} images but {len(prompts)} prompts")
    if not prompts:
        raise DataError("nothing to evaluate: no images")
    results = [judge(np.asarray(image), prompt) for image, prompt in zip(images, prompts)]
    per_attribute = {}
    for attr in ATTRIBUTES:
        values = [r[attr] for r in results if attr in r]
        if values:
            per_attribute[attr] = float(np.mean(values))
    accuracy = float(np.mean([r["correct"] for r in results]))
    return {"accuracy": accuracy, "per_attribute": per_attribute, "n": len(results),
            "correct": [bool(r["correct"]) for r in results]}
