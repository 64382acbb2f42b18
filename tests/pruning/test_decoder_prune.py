"""Decoder pruning: latent interface kept, ratio respected, L1 keeps the largest filters, save/load, bad input, CLI.

Tiny VAEs only (widths 16-32); SD-1.5 sizes are counted on the meta device (no weights, no forward pass).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn

from pocketdiff.errors import ModelDirError
from pocketdiff.pruning.decoder import (SD15_VAE_CONFIG, PruningError, SlimAutoencoderKL, decoder_param_count,
                                        decoder_widths, load_vae_dir, param_count, prune_decoder, save_vae,
                                        vae_class)
from pocketdiff.pruning.tiny_decoder import TinyDecoder
from pocketdiff.models import build_vae

pytest.importorskip("torch_pruning")

GROUPS = 4
WIDTHS = (16, 32, 32)  # channels per GroupNorm group: 4, 8, 8


def make_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return build_vae(WIDTHS, norm_num_groups=GROUPS).eval()


@pytest.fixture(scope="module")
def pair():
    vae = make_vae().requires_grad_(False)  # frozen, as a loaded teacher is: pruning must still trace it
    return vae, prune_decoder(vae, ratio=0.5)


def test_pruned_forward_and_latent_interface(pair):
    vae, slim = pair
    assert isinstance(slim, SlimAutoencoderKL)
    for key in ("latent_channels", "scaling_factor", "block_out_channels", "sample_size", "norm_num_groups"):
        assert slim.config[key] == vae.config[key], key
    # the encoder (and quant_conv) is untouched, tensor for tensor
    before, after = vae.state_dict(), slim.state_dict()
    enc = [k for k in before if not k.startswith("decoder.") and not k.startswith("post_quant_conv")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(slim.encode(x).latent_dist.mode(), z)
    with torch.no_grad():
        assert slim.decode(z).sample.shape == vae.decode(z).sample.shape == (2, 3, 64, 64)
    # the input model is not modified
    assert decoder_widths(vae) == list(WIDTHS) and not any(p.requires_grad for p in vae.parameters())


def test_ratio_respected(pair):
    vae, slim = pair
    assert decoder_widths(slim) == [w // 2 for w in WIDTHS]
    assert list(slim.config.decoder_block_out_channels) == [w // 2 for w in WIDTHS]
    ratio = param_count(slim.decoder) / param_count(vae.decoder)
    assert 0.2 < ratio < 0.32  # both in- and out-channels halve: ~1/4 of the weights


def test_sd15_counts_on_meta():
    """SnapFusion: 50M -> 13M at 50% uniform pruning. SD-1.5 (32 groups) at 0.5: widths halve exactly."""
    full = decoder_param_count(SD15_VAE_CONFIG)
    half = decoder_param_count(SD15_VAE_CONFIG, decoder_block_out_channels=(64, 128, 256, 256))
    tiny = decoder_param_count(SD15_VAE_CONFIG, decoder_type="tiny")
    assert 49e6 < full < 50e6 and 12e6 < half < 13e6 and 0.9e6 < tiny < 1.5e6


def test_save_load_round_trip(pair, tmp_path):
    vae, slim = pair
    out = save_vae(slim, tmp_path / "pruned", {"ratio": 0.5})
    assert json.loads((out / "pruning.json").read_text())["ratio"] == 0.5
    assert vae_class(out) is SlimAutoencoderKL and vae_class(tmp_path / "nowhere") is AutoencoderKL
    back = load_vae_dir(out)
    assert isinstance(back, SlimAutoencoderKL) and decoder_widths(back) == decoder_widths(slim)
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.decode(z).sample, slim.decode(z).sample)
    with pytest.raises(ModelDirError, match="not a model directory"):  # never replaces an unrelated folder
        (tmp_path / "precious").mkdir()
        (tmp_path / "precious" / "notes.txt").write_text("x")
        save_vae(slim, tmp_path / "precious")


def test_l1_keeps_highest_norm_channels():
    """Every filter row is filled with one value whose integer part ranks its channel: p[offset within its
    GroupNorm group] (a permutation). Torch-Pruning keeps the same positions in every group (GroupNorm keeps its
    group count), so L1 must keep exactly the positions with p >= group_size / 2, in every pruned layer."""
    vae = make_vae()
    dec = vae.decoder
    with torch.no_grad():
        for m in dec.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                c = m.weight.shape[0]
                if m is dec.conv_out:
                    m.weight.fill_(1.0)
                    continue
                gs = c // GROUPS
                p = np.random.default_rng(gs).permutation(gs)  # the same ranking for every layer of this width
                score = [1.0 + p[o % gs] + 0.001 * (o // gs) for o in range(c)]
                m.weight.copy_(torch.tensor(score).view(-1, *[1] * (m.weight.dim() - 1)).expand_as(m.weight))
    slim = prune_decoder(vae, ratio=0.5, importance="l1")
    checked = 0
    for name, m in slim.decoder.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and m is not slim.decoder.conv_out:
            kept_gs = m.weight.shape[0] // GROUPS  # half the original group size
            rows = m.weight.flatten(1)
            assert torch.all(rows == rows[:, :1]), name  # rows were copied whole
            ranks = (rows[:, 0] - 1).floor()
            assert torch.all(ranks >= kept_gs), (name, ranks.tolist())  # only the top half by L1 survives
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_bad_ratio(ratio):
    with pytest.raises(PruningError, match=r"\(0, 1\)"):
        prune_decoder(make_vae(), ratio=ratio)


def test_bad_vae_dirs(tmp_path):
    with pytest.raises(ModelDirError, match="no such directory"):
        load_vae_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no config.json"):
        load_vae_dir(tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelDirError, match="holds a UNet2DConditionModel, not a AutoencoderKL"):
        load_vae_dir(tmp_path / "unet")
    # a VAE directory whose weights hold no decoder
    from safetensors.torch import save_file

    enc_only = tmp_path / "enc_only"
    vae = make_vae()
    vae.save_pretrained(str(enc_only))
    state = {k: v.contiguous() for k, v in vae.state_dict().items() if not k.startswith("decoder.")}
    save_file(state, str(enc_only / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelDirError, match="no decoder weights"):
        load_vae_dir(enc_only)
    with pytest.raises(PruningError, match="no diffusers Decoder"):
        prune_decoder(SlimAutoencoderKL(**{k: v for k, v in vae.config.items() if not k.startswith("_")},
                                        decoder_type="tiny", tiny_channels=8, tiny_blocks=1))


def test_cli_prune_decoder(tmp_path, capsys):
    from pocketdiff.cli import main

    src = tmp_path / "vae"
    make_vae().save_pretrained(str(src))
    with pytest.raises(SystemExit) as e:  # typer's standalone mode exits 0 on success
        main(["prune", "decoder", "--vae", str(src), "--ratio", "0.5", "--out", str(tmp_path / "out"),
              "--json", str(tmp_path / "r.json")])
    assert e.value.code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["decoder_widths_after"] == [8, 16, 16] and report["decoder_params_ratio"] < 0.32
    assert decoder_widths(load_vae_dir(tmp_path / "out")) == [8, 16, 16]
    for args, msg in ([["--vae", str(src), "--ratio", "1.0"], "(0, 1)"],
                      [["--vae", str(tmp_path / "nope"), "--ratio", "0.5"], "no such directory"],
                      [["--vae", str(src), "--importance", "taylor"], "importance"]):
        with pytest.raises(SystemExit) as e:
            main(["prune", "decoder", *args, "--out", str(tmp_path / "bad")])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("upsample,latent", [(4, 16), (8, 8)])
def test_tiny_decoder_shapes(upsample, latent):
    dec = TinyDecoder(channels=8, blocks=1, upsample=upsample)
    assert dec(torch.randn(2, 4, latent, latent)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="power of 2"):
        TinyDecoder(upsample=6)


def test_tiny_slim_vae_round_trip(tmp_path):
    vae = make_vae()
    cfg = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    tiny = SlimAutoencoderKL(**cfg, decoder_type="tiny", tiny_channels=8, tiny_blocks=1).eval()
    assert isinstance(tiny.decoder, TinyDecoder) and tiny.decoder.latent_scale == vae.config.scaling_factor
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert tiny.decode(z).sample.shape == (1, 3, 64, 64)
        tiny.save_pretrained(str(tmp_path / "tiny"))
        torch.testing.assert_close(load_vae_dir(tmp_path / "tiny").decode(z).sample, tiny.decode(z).sample)


def test_regroup_keeps_channels_per_group_and_the_weights(pair, tmp_path):
    vae, slim = pair
    regrouped = prune_decoder(vae, ratio=0.5, regroup=True)
    assert regrouped.config.decoder_norm_num_groups == GROUPS // 2 and regrouped.config.norm_num_groups == GROUPS
    norms = [m for m in regrouped.decoder.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == GROUPS // 2 for m in norms)
    assert all(m.num_groups == GROUPS for m in vae.encoder.modules() if isinstance(m, nn.GroupNorm))
    a, b = slim.state_dict(), regrouped.state_dict()  # same pruned weights, only the grouping differs
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    back = load_vae_dir(save_vae(regrouped, tmp_path / "regrouped"))
    assert all(m.num_groups == GROUPS // 2 for m in back.decoder.modules() if isinstance(m, nn.GroupNorm))
