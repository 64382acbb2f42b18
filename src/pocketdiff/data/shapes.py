"""The "shapes world": a procedural, captioned 64x64 RGB domain with an exact judge.

A scene holds one or two flat-coloured objects on a plain background. Every attribute a caption names (shape,
colour, size, position; for two objects the spatial relation) can be read back from the pixels by
`pocketdiff.evaluation.judge`, so compositional accuracy is measured exactly instead of by a learned scorer.

Attributes
    shapes      circle, square, triangle (pointing up), diamond, cross
    colours     red, green, blue, yellow, purple, orange           (objects)
    backgrounds white, black, gray                                 (never an object colour)
    sizes       small (half-extent 6-8 px at 64 px), large (11.5-13.5 px)
    positions   left, right, top, bottom, center                   (one object only)
    relations   "left of", "right of", "above", "below"            (two objects, always of different colours;
                                                                    `objects[0]` is the subject)

Held-out rule (fixed forever: it uses only constant tables and SHA-256, never Python's `hash` or a numpy stream).
A scene is held out when either
  1. one of its objects is a purple triangle or an orange circle: these colour+shape pairs never appear in
     training at all, in one- or two-object scenes, so a model must compose them from parts; or
  2. its attribute tuple (the background ignored) is one of a fixed ~5% of the one-object tuples, or of a fixed
     ~2% of the two-object tuples, chosen by SHA-256 of the tuple. Two-object tuples are first put in canonical
     form ("B right of A" -> "A left of B", "below" -> "above"), so a paraphrase cannot leak a held-out scene.
That holds out ~11% of one-object and ~15% of two-object scenes. `sample_scene(split="train")` reject-samples
them away; `heldout_prompts` lists 200 fixed prompts for each of "heldout-single" and "heldout-two".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pocketdiff.errors import DataError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 25),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (245, 235, 20),
    "purple": (150, 30, 210),
    "orange": (255, 140, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Geometry, in units of a 64 px canvas (scaled for other sizes). Positions are object centroids.
SIZE_RANGES = {"small": (6.0, 8.0), "large": (11.5, 13.5)}
POSITION_CENTERS = {"left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "center": (32, 32)}
POSITION_JITTER = 3.0
CROSS_ARM = 0.4  # half-width of a cross arm, as a fraction of the half-extent
SHAPE_AREA = {  # area / half-extent^2, which lets the judge recover a blob's half-extent from its area
    "circle": float(np.pi),
    "square": 4.0,
    "triangle": 2.0,
    "diamond": 2.0,
    "cross": 8 * CROSS_ARM - 4 * CROSS_ARM**2,
}

HELDOUT_PAIRS = frozenset({("purple", "triangle"), ("orange", "circle")})
_HELDOUT_PER_MILLE = {1: 50, 2: 20}
HELDOUT_SETS = {"heldout-single": 1, "heldout-two": 2}
HELDOUT_PROMPTS_PER_SET = 200
BACKGROUND_MENTION_PER_TEN = 3
SIZE_MENTION_PER_TEN = 8

POSITION_PHRASES = {  # "a red circle <phrase>"
    "left": ("on the left", "at the left", "on the left side", "to the left"),
    "right": ("on the right", "at the right", "on the right side", "to the right"),
    "top": ("at the top", "on the top", "near the top", "at the top side"),
    "bottom": ("at the bottom", "on the bottom", "near the bottom", "at the bottom side"),
    "center": ("in the center", "in the middle", "at the center", "near the center"),
}
POSITION_WORDS = {  # "red circle, <word>"
    "left": ("left side", "left"),
    "right": ("right side", "right"),
    "top": ("top side", "top"),
    "bottom": ("bottom side", "bottom"),
    "center": ("center", "middle"),
}
RELATION_PHRASES = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
SINGLE_TEMPLATES = ("{a} {obj} {pos}", "{obj} {pos}", "{obj}, {word}", "{pos}, {a} {obj}", "there is {a} {obj} {pos}")
TWO_TEMPLATES = ("{a} {obj} {rel} {b} {obj2}", "{obj} {rel} {obj2}", "there is {a} {obj} {rel} {b} {obj2}")
BACKGROUND_TEMPLATES = (" on {a} {bg} background", ", {bg} background")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    position: str | None = None  # None in two-object scenes, where the relation places the objects


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    relation: str | None  # objects[0] <relation> objects[1]
    background: str


# ----------------------------------------------------------------------------------------------- held-out rule


def _stable_int(*parts: object) -> int:
    """A hash that is the same on every machine and Python version (unlike `hash`)."""
    text = "pocketdiff-shapes/" + "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def canonical_key(scene: Scene) -> str:
    """The scene's attributes as a string, background ignored and two-object relations in canonical form."""
    if len(scene.objects) == 1:
        o = scene.objects[0]
        return f"1:{o.shape},{o.color},{o.size},{o.position}"
    a, b = scene.objects
    relation = scene.relation
    if relation in ("right of", "below"):
        a, b, relation = b, a, INVERSE_RELATION[relation]
    return f"2:{a.shape},{a.color},{a.size}:{relation}:{b.shape},{b.color},{b.size}"


def is_heldout(scene: Scene) -> bool:
    """True if the scene is reserved for evaluation (see the module docstring for the rule)."""
    if any((o.color, o.shape) in HELDOUT_PAIRS for o in scene.objects):
        return True
    return _stable_int("heldout", canonical_key(scene)) % 1000 < _HELDOUT_PER_MILLE[len(scene.objects)]


# ----------------------------------------------------------------------------------------------------- scenes


def _random_object(rng: np.random.Generator, position: str | None, exclude_color: str | None = None) -> ShapeObject:
    colors = [c for c in COLORS if c != exclude_color]
    return ShapeObject(
        shape=SHAPES[rng.integers(len(SHAPES))],
        color=colors[rng.integers(len(colors))],
        size=SIZES[rng.integers(len(SIZES))],
        position=position,
    )


def _random_scene(rng: np.random.Generator, num_objects: int) -> Scene:
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if num_objects == 1:
        return Scene((_random_object(rng, POSITIONS[rng.integers(len(POSITIONS))]),), None, background)
    a = _random_object(rng, None)
    b = _random_object(rng, None, exclude_color=a.color)
    return Scene((a, b), RELATIONS[rng.integers(len(RELATIONS))], background)


def sample_scene(rng: np.random.Generator, num_objects: int | None = None, split: str = "train") -> Scene:
    """A random scene. `split`: "train" never yields a held-out scene, "heldout" only those, "all" anything."""
    if split not in ("train", "heldout", "all"):
        raise DataError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if num_objects not in (None, 1, 2):
        raise DataError(f"num_objects must be 1, 2 or None, got {num_objects!r}")
    while True:
        n = num_objects if num_objects is not None else 1 + int(rng.integers(2))
        scene = _random_scene(rng, n)
        if split == "all" or is_heldout(scene) == (split == "heldout"):
            return scene


# --------------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _compose(scene: Scene, pick: Callable[[int], int], full: bool = False) -> str:
    """Build a caption; `pick(n)` returns a choice in [0, n). `full` always names the size."""

    def describe(o: ShapeObject) -> str:
        words = [o.color, o.shape]
        if full or pick(10) < SIZE_MENTION_PER_TEN:
            words.insert(0, o.size)
        return " ".join(words)

    if len(scene.objects) == 1:
        o = scene.objects[0]
        obj = describe(o)
        template = SINGLE_TEMPLATES[pick(len(SINGLE_TEMPLATES))]
        phrases, words = POSITION_PHRASES[o.position], POSITION_WORDS[o.position]
        phrase, word = phrases[pick(len(phrases))], words[pick(len(words))]
        text = template.format(a=_article(obj), obj=obj, pos=phrase, word=word)
    else:
        a, b = scene.objects
        relation = scene.relation
        if pick(2):  # say it the other way round: "B right of A"
            a, b, relation = b, a, INVERSE_RELATION[relation]
        obj, obj2 = describe(a), describe(b)
        phrases = RELATION_PHRASES[relation]
        text = TWO_TEMPLATES[pick(len(TWO_TEMPLATES))].format(
            a=_article(obj), obj=obj, rel=phrases[pick(len(phrases))], b=_article(obj2), obj2=obj2
        )
    if pick(10) < BACKGROUND_MENTION_PER_TEN:
        template = BACKGROUND_TEMPLATES[pick(len(BACKGROUND_TEMPLATES))]
        text += template.format(a=_article(scene.background), bg=scene.background)
    return text


def caption(scene: Scene, rng: np.random.Generator, full: bool = False) -> str:
    """A random paraphrase describing the scene. The background is sometimes named; the size is left out of ~20%
    of captions (so a model also learns to choose it) unless `full`."""
    return _compose(scene, lambda n: int(rng.integers(n)), full)


def _build_vocabulary() -> list[str]:
    texts = [*SINGLE_TEMPLATES, *TWO_TEMPLATES, *BACKGROUND_TEMPLATES]
    tables = (POSITION_PHRASES, POSITION_WORDS, RELATION_PHRASES)
    texts += [p for table in tables for phrases in table.values() for p in phrases]
    words = {w for t in texts for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t))}
    return sorted(words | {"a", "an"} | set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(SIZES))


VOCABULARY: list[str] = _build_vocabulary()


# ------------------------------------------------------------------------------------------------ held-out sets


def _all_scenes(num_objects: int) -> Iterator[Scene]:
    """Every attribute tuple (background "white", two-object relations canonical), in a frozen order."""
    objects = [(s, c, z) for s in SHAPES for c in COLORS for z in SIZES]
    if num_objects == 1:
        for s, c, z in objects:
            for p in POSITIONS:
                yield Scene((ShapeObject(s, c, z, p),), None, "white")
        return
    for sa, ca, za in objects:
        for sb, cb, zb in objects:
            if ca != cb:
                for relation in ("left of", "above"):
                    yield Scene((ShapeObject(sa, ca, za), ShapeObject(sb, cb, zb)), relation, "white")


def _hash_picker(*parts: object) -> Callable[[int], int]:
    """A `pick(n)` whose choices follow from SHA-256 alone, so held-out prompts never change."""
    calls = iter(range(1 << 30))
    return lambda n: _stable_int("prompt", *parts, next(calls)) % n


def heldout_prompts(name: str) -> list[tuple[str, Scene]]:
    """The fixed evaluation prompts for `name` in {"heldout-single", "heldout-two"}, with their scenes.

    One-object held-out tuples are few (~34), so they repeat with different backgrounds and paraphrases. Prompts
    always name the size; the background is named in ~30% of them.
    """
    if name not in HELDOUT_SETS:
        raise DataError(f"unknown held-out set {name!r}; choose one of {sorted(HELDOUT_SETS)}")
    pool = sorted(
        (s for s in _all_scenes(HELDOUT_SETS[name]) if is_heldout(s)),
        key=lambda s: _stable_int("order", canonical_key(s)),
    )
    prompts = []
    for i in range(HELDOUT_PROMPTS_PER_SET):
        base = pool[i % len(pool)]
        pick = _hash_picker(name, i)
        scene = Scene(base.objects, base.relation, list(BACKGROUNDS)[pick(len(BACKGROUNDS))])
        prompts.append((_compose(scene, pick, full=True), scene))
    return prompts


# --------------------------------------------------------------------------------------------------- rendering


def _extents(shape: str, r: float) -> tuple[float, float, float, float]:
    """Distance from the centroid to the left, right, top and bottom edges (a triangle's centroid sits low)."""
    if shape == "triangle":
        return r, r, 4 * r / 3, 2 * r / 3
    return r, r, r, r


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-test on offsets from the centroid (y points down)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (ax <= r) & (ay <= r)
    if shape == "diamond":
        return ax + ay <= r
    if shape == "triangle":
        return (dy >= -4 * r / 3) & (dy <= 2 * r / 3) & (ax <= (dy + 4 * r / 3) / 2)
    if shape == "cross":
        w = CROSS_ARM * r
        return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))
    raise DataError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def _radius(size: str, rng: np.random.Generator | None) -> float:
    lo, hi = SIZE_RANGES[size]
    return (lo + hi) / 2 if rng is None else float(rng.uniform(lo, hi))


def _fit(value: float, lo_ext: float, hi_ext: float) -> float:
    """Clamp a centroid coordinate so the object stays inside the 64-unit canvas."""
    return float(np.clip(value, lo_ext + 0.5, 63.5 - hi_ext))


def layout(scene: Scene, rng: np.random.Generator | None = None) -> list[tuple[float, float, float]]:
    """(cx, cy, r) per object on a 64-unit canvas; `rng` adds jitter, None gives the nominal layout."""

    def jitter(amount: float) -> float:
        return 0.0 if rng is None else float(rng.uniform(-amount, amount))

    radii = [_radius(o.size, rng) for o in scene.objects]
    if len(scene.objects) == 1:
        (o,), (r,) = scene.objects, radii
        left, right, top, bottom = _extents(o.shape, r)
        x, y = POSITION_CENTERS[o.position]
        return [(_fit(x + jitter(POSITION_JITTER), left, right), _fit(y + jitter(POSITION_JITTER), top, bottom), r)]

    # Two objects: `first` lies on the low side (left / top) of the relation's axis, `second` on the high side.
    first, second = (0, 1) if scene.relation in ("left of", "above") else (1, 0)
    horizontal = scene.relation in ("left of", "right of")
    ext = [_extents(o.shape, r) for o, r in zip(scene.objects, radii)]
    axis = (0, 1) if horizontal else (2, 3)  # (low-side, high-side) extent indices along the axis
    cross_axis = (2, 3) if horizontal else (0, 1)
    lo_first, hi_first = ext[first][axis[0]], ext[first][axis[1]]
    lo_second, hi_second = ext[second][axis[0]], ext[second][axis[1]]
    # Centroids at least 24 units apart and a 3-unit gap between the shapes: the relation is unmistakable.
    min_sep = max(24.0, hi_first + lo_second + 3.0)
    max_sep = 63.0 - lo_first - hi_second
    sep = min_sep if rng is None else float(rng.uniform(min_sep, min(max_sep, min_sep + 8.0)))
    a_lo, a_hi = lo_first + 0.5, 63.5 - hi_second - sep
    a = (a_lo + a_hi) / 2 + jitter(min(3.0, (a_hi - a_lo) / 2))
    along = {first: a, second: a + sep}
    out = []
    for i, r in enumerate(radii):
        c = _fit(32 + jitter(4.0), ext[i][cross_axis[0]], ext[i][cross_axis[1]])
        out.append((along[i], c, r) if horizontal else (c, along[i], r))
    return out


def coverage(shape: str, cx: float, cy: float, r: float, hw: tuple[int, int], supersample: int = 2) -> np.ndarray:
    """Fraction of each pixel of an (h, w) window covered by the shape, from supersample^2 point samples."""
    h, w = hw
    xs = (np.arange(w * supersample, dtype=np.float32) + 0.5) / supersample - cx
    ys = (np.arange(h * supersample, dtype=np.float32) + 0.5) / supersample - cy
    mask = shape_mask(shape, xs[None, :], ys[:, None], r)
    return mask.reshape(h, supersample, w, supersample).mean(axis=(1, 3), dtype=np.float32)


def render(
    scene: Scene,
    size: int = 64,
    rng: np.random.Generator | None = None,
    supersample: int = 2,
    placement: list[tuple[float, float, float]] | None = None,
) -> np.ndarray:
    """Draw the scene as a uint8 (size, size, 3) array; edges are anti-aliased by `supersample`^2 sampling.
    `placement` (from `layout`) fixes the geometry, for callers that need to know it; otherwise `rng` jitters it."""
    scale = size / 64
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUNDS[scene.background]
    for o, (cx, cy, r) in zip(scene.objects, placement or layout(scene, rng)):
        cx, cy, r = cx * scale, cy * scale, r * scale
        reach = 1.5 * r + 1  # covers every shape's extent around its centroid
        x0, x1 = max(0, int(cx - reach)), min(size, int(np.ceil(cx + reach)))
        y0, y1 = max(0, int(cy - reach)), min(size, int(np.ceil(cy + reach)))
        alpha = coverage(o.shape, cx - x0, cy - y0, r, (y1 - y0, x1 - x0), supersample)
        patch = image[y0:y1, x0:x1]
        patch += alpha[..., None] * (np.asarray(COLORS[o.color], np.float32) - patch)
    return np.rint(image).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- batches


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], the convention of every pocketdiff model."""
    return torch.from_numpy(images).movedim(-1, -3).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] (clamped) -> uint8 (..., H, W, 3): the inverse of `to_tensor`."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def make_batch(
    rng: np.random.Generator,
    batch_size: int,
    two_object_fraction: float = 0.5,
    split: str = "train",
    size: int = 64,
    return_scenes: bool = False,
) -> dict:
    """A batch in-process: {"pixel_values": (B, 3, size, size) in [-1, 1], "caption": list[str]} (+ "scenes")."""
    scenes = [sample_scene(rng, 2 if rng.random() < two_object_fraction else 1, split) for _ in range(batch_size)]
    images = np.stack([render(s, size, rng) for s in scenes])
    batch = {"pixel_values": to_tensor(images), "caption": [caption(s, rng) for s in scenes]}
    if return_scenes:
        batch["scenes"] = scenes
    return batch


def make_example(rng: np.random.Generator, two_object_fraction: float = 0.5, split: str = "train",
                 size: int = 64) -> dict:
    """One example {"pixel_values": (3, size, size) in [-1, 1], "caption": str}, drawn with `rng` only."""
    scene = sample_scene(rng, 2 if rng.random() < two_object_fraction else 1, split)
    return {"pixel_values": to_tensor(render(scene, size, rng)), "caption": caption(scene, rng)}


class ShapesDataset(torch.utils.data.IterableDataset):
    """An endless, seeded stream of {"pixel_values", "caption"} examples. Each DataLoader worker gets its own
    stream (seeded by `seed` and the worker id), so the stream is deterministic for a given `num_workers`."""

    def __init__(self, seed: int = 0, two_object_fraction: float = 0.5, split: str = "train", size: int = 64):
        if not 0.0 <= two_object_fraction <= 1.0:
            raise DataError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
        self.seed, self.two_object_fraction, self.split, self.size = seed, two_object_fraction, split, size

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id])
        while True:
            yield make_example(rng, self.two_object_fraction, self.split, self.size)


EVAL_SEED = 10_000  # renders held-out scenes with jitter no training batch shares


def heldout_images(n: int = 400, seed: int = EVAL_SEED, size: int = 64, with_prompts: bool = False):
    """Held-out scenes (heldout-single and heldout-two interleaved, n in all) rendered with `seed`: [n, 3, H, W] in
    [-1, 1] (and their prompts and object counts if `with_prompts`)."""
    one, two = heldout_prompts("heldout-single"), heldout_prompts("heldout-two")
    pairs = [p for ab in zip(one, two) for p in ab]
    pairs = [pairs[i % len(pairs)] for i in range(n)]
    rng = np.random.default_rng(seed)
    images = to_tensor(np.stack([render(s, size, rng) for _, s in pairs]))
    if not with_prompts:
        return images
    return images, [p for p, _ in pairs], [len(s.objects) for _, s in pairs]

