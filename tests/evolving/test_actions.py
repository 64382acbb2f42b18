"""Evolving's actions: removing a block equals running it as identity; copies are twins; non-evolvable blocks refuse."""

import pytest
import torch

from pocketdiff.arch import FlexUNet, get_spec
from pocketdiff.evolving import choose_actions, edit, evolvable


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    spec = get_spec("sd15", width=0.05, sample_size=8, cross_attention_dim=32)
    return FlexUNet.from_spec(spec).eval()


def inputs(unet):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 32, generator=g))


def test_evolvable_is_every_transformer_and_the_mid_resnets(unet):
    keys = evolvable(unet.spec)
    kinds = {k: b.kind for *k, b in unet.spec.all_blocks() for k in [tuple(k)]}
    assert {k for k in keys if kinds[k] == "tf"} == {k for k, kind in kinds.items() if kind == "tf"}
    assert {k for k in keys if kinds[k] == "res"} == {("mid", 3, 0), ("mid", 3, 2)}
    assert set(keys) <= set(unet.droppable())


@pytest.mark.parametrize("removed", [[("down", 0, 1)], [("up", 1, 3), ("mid", 3, 1)], [("mid", 3, 0), ("up", 2, 5)]])
def test_removing_blocks_equals_skipping_them(unet, removed):
    x = inputs(unet)
    with torch.no_grad():
        unet.skipped = set(removed)
        want = unet(*x).sample
        unet.skipped = set()
        small = edit(unet, remove=removed)
        got = small(*x).sample
    n = sum(1 for _ in unet.spec.all_blocks())
    assert sum(1 for _ in small.spec.all_blocks()) == n - len(removed)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in unet.parameters())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert small.spec.name.endswith("-evolved")


def test_a_copy_is_a_twin_after_its_original(unet):
    key = ("up", 1, 1)
    big = edit(unet, copy=[key])
    assert [b.kind for b in big.spec.up[1]] == ["res", "tf", "tf", "res", "tf", "res", "tf"]
    for a, b in zip(big.block(("up", 1, 1)).state_dict().values(), big.block(("up", 1, 2)).state_dict().values()):
        assert torch.equal(a, b)
    # blocks after the copy keep their own weights (shifted by one)
    for a, b in zip(big.block(("up", 1, 4)).state_dict().values(), unet.block(("up", 1, 3)).state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert big(*inputs(unet)).sample.shape == (2, 4, 8, 8)


def test_blocks_that_would_break_the_skip_pairing_cannot_evolve(unet):
    with pytest.raises(ValueError, match="cannot evolve"):
        edit(unet, remove=[("down", 0, 2)])  # a down ResNet: its unit makes a skip
    with pytest.raises(ValueError, match="cannot evolve"):
        edit(unet, copy=[("up", 0, 0)])  # an up ResNet merges a skip
    with pytest.raises(ValueError, match="both removed and copied"):
        edit(unet, remove=[("down", 0, 1)], copy=[("down", 0, 1)])


def test_choose_actions_removes_lowest_scores_until_the_target_then_copies_what_fits():
    scores = {("a", 0, 0): -1.0, ("b", 0, 0): 0.5, ("c", 0, 0): 2.0, ("d", 0, 0): 0.1}
    ms = {("a", 0, 0): 3.0, ("b", 0, 0): 4.0, ("c", 0, 0): 5.0, ("d", 0, 0): 1.0}
    removed, copied = choose_actions(scores, ms, predicted=20.0, target=18.0, group=3)
    assert removed == [("a", 0, 0)] and copied == []  # 17 <= 18: stop early
    removed, copied = choose_actions(scores, ms, predicted=30.0, target=18.0, group=2)
    assert removed == [("a", 0, 0), ("d", 0, 0)]  # group caps the round
    removed, copied = choose_actions(scores, ms, predicted=12.0, target=18.0, group=3)
    assert removed == [] and copied == [("c", 0, 0), ("d", 0, 0)]  # c (5 ms) fits, b (4) no longer does, d does
    assert choose_actions(scores, ms, predicted=17.5, target=18.0, group=3) == ([], [])
