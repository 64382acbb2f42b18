"""Full-size SD-1.5 parity (slow: two 860M-param models). Run by hand: pytest -m slow tests/arch/test_sd15_full.py"""

import pytest
import torch


@pytest.mark.slow
def test_sd15_full_size_matches_diffusers():
    from diffusers import UNet2DConditionModel

    from pocketdiff.arch import flexunet_from_diffusers, get_spec

    torch.manual_seed(0)
    ref = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()  # diffusers' defaults = SD-1.x
    ours = flexunet_from_diffusers(ref).eval()
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    assert ours.spec.counts() == get_spec("sd15").counts()
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        diff = (ref(x, 500, c).sample - ours(x, 500, c).sample).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < 1e-4
