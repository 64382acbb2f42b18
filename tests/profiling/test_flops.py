import pytest
import torch
from diffusers import UNet2DConditionModel

from pocketdiff.arch import FlexUNet, block_signature, get_spec, list_presets
from pocketdiff.arch.blocks import ResBlock
from pocketdiff.errors import SpecError
from pocketdiff.profiling import analyze, count_flops, units
from pocketdiff.profiling.components import component_costs

TINY = dict(width=0.1, sample_size=16, cross_attention_dim=24)


def test_tiny_sd15_flops_equal_diffusers():
    spec = get_spec("sd15", **TINY)
    with torch.device("meta"):
        ref = UNet2DConditionModel(
            sample_size=16, block_out_channels=spec.channels, layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=24, attention_head_dim=8, norm_num_groups=spec.norm_groups,
        )
        ours = FlexUNet.from_spec(spec)
        x, t, c = torch.zeros(1, 4, 16, 16), torch.tensor([999]), torch.zeros(1, 77, 24)
    ref_flops = count_flops(ref, x, t, c)
    assert count_flops(ours, x, t, c) == ref_flops > 0
    cost = analyze(spec, resolution=128)
    assert cost.flops == ref_flops
    assert cost.params == sum(p.numel() for p in ref.parameters())


def test_full_size_sd15_matches_measured():
    cost = analyze(get_spec("sd15"), resolution=512)
    assert round(cost.params / 1e6, 1) == 859.5
    assert round(cost.gflops) == 803 and cost.macs * 2 == cost.flops
    assert cost.to_dict()["resnets"] == 22


@pytest.mark.parametrize("name", list_presets())
def test_units_cover_the_model(name):
    spec = get_spec(name, **TINY)
    cost = analyze(spec, resolution=128)
    assert sum(u.flops for u in cost.units) == cost.flops
    assert sum(u.params for u in cost.units) == cost.params
    assert [u.unit.key for u in cost.units if u.unit.is_block] == [(p, l, i) for p, l, i, _ in spec.all_blocks()]
    # the widths derived from the spec alone are the ones FlexUNet builds (skips included)
    model = FlexUNet.from_spec(spec)
    for u in units(spec, 16):
        if u.is_block:
            mod = model.block(u.key)
            cin = mod.norm1.num_channels if isinstance(mod, ResBlock) else mod.norm.num_channels
            assert u.in_channels == cin, u
            b = dict(((p, l, i), b) for p, l, i, b in spec.all_blocks())[u.key]
            assert u.signature == block_signature(b, spec.channels[u.level], cin, 16 // 2**u.level, 77, 24)
    assert sum(r["flops"] for r in cost.stage_rows()) == cost.flops


def test_resolution_is_checked():
    spec = get_spec("sd15", **TINY)
    with pytest.raises(SpecError, match="multiple of 8"):
        analyze(spec, resolution=100)
    with pytest.raises(SpecError, match="divisible"):
        analyze(spec, resolution=40)  # latent 5, 4 levels need a multiple of 8


def test_component_costs_are_sd15s():
    c = component_costs(8)
    assert round(c["text_encoder"]["params"] / 1e6, 1) == 123.1
    assert round(c["vae_decoder"]["params"] / 1e6, 1) == 49.5
    assert c["vae_decoder"]["flops"] > 0 and c["text_encoder"]["flops"] > 0
