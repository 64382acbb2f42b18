import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from pocketdiff.arch import ArchSpec, FlexUNet, create, flexunet_from_diffusers, get_spec, list_presets
from pocketdiff.errors import ModelDirError, SpecError, UnknownPresetError, WeightsError


def small_sd_diffusers(seed=0):
    """A diffusers UNet with SD-1.5's topology at toy width (the same block types, counts and skip wiring)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def inputs(batch=2, size=16, ctx=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, size, size, generator=g), torch.tensor([3, 700]), torch.randn(batch, 7, ctx, generator=g)


def test_from_diffusers_is_exact_and_strict():
    ref = small_sd_diffusers()
    ours = flexunet_from_diffusers(ref).eval()
    x, t, c = inputs()
    with torch.no_grad():
        a = ref(x, t, c).sample
        b = ours(x, t, c).sample
    assert (a - b).abs().max().item() < 1e-4
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_from_diffusers_directory(tmp_path):
    small_sd_diffusers().save_pretrained(tmp_path / "unet")
    ours = flexunet_from_diffusers(tmp_path)  # a pipeline directory with unet/ works too
    assert ours.spec.counts()["resnets"] == 22


def test_sd15_spec_matches_diffusers_topology():
    ours = get_spec("sd15", width=0.1, sample_size=16, cross_attention_dim=24)
    ref = small_sd_diffusers()
    from pocketdiff.arch import spec_from_diffusers_config

    derived = spec_from_diffusers_config(dict(ref.config))
    assert [[b.kind for b in lvl] for lvl in derived.down] == [[b.kind for b in lvl] for lvl in ours.down]
    assert [[b.kind for b in lvl] for lvl in derived.up] == [[b.kind for b in lvl] for lvl in ours.up]
    assert [b.kind for b in derived.mid] == [b.kind for b in ours.mid]


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_runs_small(name):
    m = create(name, width=0.1, sample_size=16, cross_attention_dim=24).eval()
    x, t, c = inputs(batch=1, seed=2)
    with torch.no_grad():
        out = m(x, t[:1], c).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_presets_full_size_counts():
    expected = {  # resnets, self-attention, cross-attention (the talk's Table 1, SnapFusion's Table 3)
        "sd15": (22, 16, 16), "snapfusion": (17, 14, 14), "mobilediffusion": (11, 15, 18),
        "mobilediffusion-lite": (11, 12, 15),
    }
    for name, (r, sa, ca) in expected.items():
        c = get_spec(name).counts()
        assert (c["resnets"], c["self_attn"], c["cross_attn"]) == (r, sa, ca), name


def test_save_load_round_trip(tmp_path):
    m = create("mobilediffusion", width=0.1, sample_size=16, cross_attention_dim=24).eval()
    m.save_pretrained(tmp_path)
    assert ArchSpec.load(tmp_path / "config.json") == m.spec
    m2 = FlexUNet.from_pretrained(tmp_path).eval()
    x, t, c = inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(m(x, t[:1], c).sample, m2(x, t[:1], c).sample)


def test_spec_yaml_round_trip(tmp_path):
    spec = get_spec("snapfusion", width=0.25)
    spec.save(tmp_path / "s.yaml")
    assert ArchSpec.load(tmp_path / "s.yaml") == spec


def test_width_and_depth_scale():
    s = get_spec("sd15", width=0.125, depth=0.5)
    assert s.channels == (40, 80, 160, 160)
    assert [sum(b.kind == "res" for b in lvl) for lvl in s.down] == [1, 1, 1, 1]
    assert [sum(b.kind == "res" for b in lvl) for lvl in s.up] == [2, 2, 2, 2]
    FlexUNet.from_spec(s)


def test_relu_attention_and_shared_kv_change_the_block():
    spec = get_spec("mobilediffusion", width=0.1, sample_size=16, cross_attention_dim=24)
    m = FlexUNet.from_spec(spec)
    names = [n for n, _ in m.named_parameters()]
    assert any("attn1.to_kv" in n for n in names) and not any("attn1.to_k." in n for n in names)
    relu = spec.to_dict()
    relu["mid"] = [{**b, "attention": "relu"} if isinstance(b, dict) else b for b in relu["mid"]]
    m2 = FlexUNet(**relu)
    m2.load_state_dict(m.state_dict())
    x, t, c = inputs(batch=1)
    with torch.no_grad():
        assert not torch.allclose(m(x, t[:1], c).sample, m2(x, t[:1], c).sample)


# ------------------------------------------------------------------ bad input

def test_unknown_preset_lists_known():
    with pytest.raises(UnknownPresetError, match="sd15"):
        create("sd16")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(channels=[30, 64, 64, 64]), "norm_groups"),
    (lambda d: d["down"][1].insert(0, {"kind": "tf", "heads": 7}), "heads=7"),
    (lambda d: d["up"][0].insert(0, "tf"), "skip rule"),
    (lambda d: d.update(colour=1), "colour"),
    (lambda d: d["mid"].append({"kind": "tf", "flash": True}), "flash"),
    (lambda d: d.pop("up"), "'up'"),
])
def test_invalid_spec_names_the_field(mutate, field):
    d = get_spec("sd15", width=0.1).to_dict()
    mutate(d)
    with pytest.raises(SpecError, match=field):
        ArchSpec.from_dict(d)


def test_wrong_shape_weights_name_key_and_shapes(tmp_path):
    a = create("sd15", width=0.1, sample_size=16, cross_attention_dim=24)
    b = create("sd15", width=0.2, sample_size=16, cross_attention_dim=24)
    with pytest.raises(WeightsError, match=r"weight .time_embedding.linear_1.weight. has shape \(256, 64\), the model expects \(128, 32\)"):
        a.load_weights(b.state_dict())


def test_truncated_safetensors_is_a_weights_error(tmp_path):
    m = create("sd15", width=0.1, sample_size=16, cross_attention_dim=24)
    m.save_pretrained(tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsError, match="safetensors"):
        FlexUNet.from_pretrained(tmp_path)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ModelDirError, match="config.json"):
        FlexUNet.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ModelDirError, match="AutoencoderKL"):
        flexunet_from_diffusers(tmp_path)


def test_relu_conversion_keeps_every_weight_and_changes_only_the_attention(quick_model_dir, tmp_path):
    from typer.testing import CliRunner

    from pocketdiff.arch import FlexUNet
    from pocketdiff.arch.convert import with_attention
    from pocketdiff.cli import build_app

    src = FlexUNet.from_pretrained(quick_model_dir / "unet")
    r = CliRunner().invoke(build_app(), ["arch", "relu", str(quick_model_dir / "unet"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    relu = FlexUNet.from_pretrained(tmp_path / "r")
    kinds = {b.attention for *_, b in relu.spec.all_blocks() if b.kind == "tf"}
    assert kinds == {"relu"}
    for k, v in src.state_dict().items():
        torch.testing.assert_close(relu.state_dict()[k], v)
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 16, src.config.cross_attention_dim)
    with torch.no_grad():
        a, b = src(x, 500, ctx).sample, relu(x, 500, ctx).sample
        back = with_attention(relu, "softmax")(x, 500, ctx).sample
    assert not torch.allclose(a, b)  # ReLU attention is another function of the same weights
    torch.testing.assert_close(back, a)  # and converting back restores the parent exactly
