import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pocketdiff.data import shapes as S
from pocketdiff.errors import DataError
from pocketdiff.evaluation.judge import ParsedObject, ParsedPrompt, detect_objects, evaluate, judge, parse_prompt


def _scenes(rng, n):
    """Mixed one- and two-object scenes, training and held-out, with their rendered images."""
    scenes = [S.sample_scene(rng, 1 + i % 2, split="train" if i % 3 else "heldout") for i in range(n)]
    return scenes, [S.render(s, rng=rng) for s in scenes]


def test_ground_truth_accuracy():
    rng = np.random.default_rng(0)
    scenes, images = _scenes(rng, 1200)
    prompts = [S.caption(s, rng) for s in scenes]
    result = evaluate(images, prompts)
    assert result["n"] == 1200
    assert result["accuracy"] >= 0.99, result
    assert set(result["per_attribute"]) >= {"count", "color", "shape", "position", "relation"}


def test_heldout_prompts_are_judged_correct():
    rng = np.random.default_rng(1)
    for name in S.HELDOUT_SETS:
        pairs = S.heldout_prompts(name)[:100]
        images = [S.render(scene, rng=rng) for _, scene in pairs]
        assert evaluate(images, [p for p, _ in pairs])["accuracy"] >= 0.99


def _change(scene: S.Scene, attribute: str, rng) -> S.Scene:
    """The scene with exactly one attribute of one object (or the relation / background) changed."""
    if attribute == "relation":
        others = [r for r in S.RELATIONS if r != scene.relation]
        return S.Scene(scene.objects, others[rng.integers(len(others))], scene.background)
    if attribute == "background":
        others = [b for b in S.BACKGROUNDS if b != scene.background]
        return S.Scene(scene.objects, scene.relation, others[rng.integers(len(others))])
    i = int(rng.integers(len(scene.objects)))
    options = {
        "shape": S.SHAPES,
        "color": [c for c in S.COLORS if c not in {o.color for o in scene.objects}],
        "size": S.SIZES,
        "position": S.POSITIONS,
    }[attribute]
    old = getattr(scene.objects[i], attribute)
    new = [v for v in options if v != old][rng.integers(len(options) - (old in options))]
    objects = list(scene.objects)
    objects[i] = S.ShapeObject(**{**objects[i].__dict__, attribute: new})
    return S.Scene(tuple(objects), scene.relation, scene.background)


ATTRIBUTES = ["shape", "color", "size", "position", "relation", "background"]


@pytest.mark.parametrize("seed, attribute", list(enumerate(ATTRIBUTES)))
def test_one_wrong_attribute_is_caught(seed, attribute):
    rng = np.random.default_rng(seed)
    n_objects = {"position": 1, "relation": 2}.get(attribute)
    for _ in range(40):
        scene = S.sample_scene(rng, n_objects or 1 + int(rng.integers(2)), split="all")
        wrong = _change(scene, attribute, rng)
        prompt = S.caption(wrong, rng, full=True)
        if attribute == "background":
            prompt += f", {wrong.background} background"
        result = judge(S.render(scene, rng=rng), prompt)
        assert result[attribute] is False and result["correct"] is False, (scene, prompt, result)
        assert all(v for k, v in result.items() if k not in (attribute, "correct")), (scene, prompt, result)


def test_parse_prompt():
    p = parse_prompt("a small red circle on the left")
    assert p == ParsedPrompt((ParsedObject("circle", "red", "small", "left"),), None, None)
    p = parse_prompt("There is a large blue square on top of a green triangle, black background")
    assert p.relation == "above" and p.background == "black"
    assert p.objects == (ParsedObject("square", "blue", "large"), ParsedObject("triangle", "green"))
    assert parse_prompt("yellow cross, middle").objects[0].position == "center"
    assert parse_prompt("a red diamond to the right of an orange circle").relation == "right of"
    assert parse_prompt("a purple circle at the top").objects[0].position == "top"
    assert parse_prompt("") == ParsedPrompt()


def test_parse_round_trips_captions():
    rng = np.random.default_rng(3)
    for _ in range(2000):
        scene = S.sample_scene(rng, split="all")
        p = parse_prompt(S.caption(scene, rng, full=True))
        if p.relation != scene.relation:  # said the other way round
            assert p.relation == S.INVERSE_RELATION[scene.relation]
            p = ParsedPrompt(p.objects[::-1], scene.relation, p.background)
        assert p.relation == scene.relation
        for po, so in zip(p.objects, scene.objects, strict=True):
            assert (po.shape, po.color, po.size, po.position) == (so.shape, so.color, so.size, so.position)
        assert p.background in (None, scene.background)


def test_unknown_words_warn_and_are_ignored():
    with pytest.warns(UserWarning, match="fluffy"):
        p = parse_prompt("a fluffy red circle on the left")
    assert p.objects == (ParsedObject("circle", "red", None, "left"),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_prompt("a red circle on the left")


def test_robust_to_mild_blur_noise_and_colour_shift():
    rng = np.random.default_rng(4)
    scenes, images = _scenes(rng, 300)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3).contiguous(), groups=3)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 6 + torch.tensor([12.0, -8, 5]).view(
        1, 3, 1, 1
    )
    degraded = list(x.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy())
    assert evaluate(degraded, [S.caption(s, rng) for s in scenes])["accuracy"] >= 0.97


def test_detect_objects_and_errors():
    objects = (S.ShapeObject("cross", "green", "large"), S.ShapeObject("circle", "blue", "small"))
    scene = S.Scene(objects, "above", "gray")
    found = detect_objects(S.render(scene))
    assert [(d.shape, d.color, d.size) for d in found] == [("cross", "green", "large"), ("circle", "blue", "small")]
    assert found[0].centroid[1] < found[1].centroid[1]
    assert detect_objects(np.full((64, 64, 3), 255, np.uint8)) == []
    assert judge(np.full((64, 64, 3), 255, np.uint8), "a red circle")["count"] is False
    with pytest.raises(DataError), pytest.warns(UserWarning):
        judge(S.render(scene), "nothing here")
    with pytest.raises(DataError):
        detect_objects(np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError):
        evaluate([S.render(scene)], [])
