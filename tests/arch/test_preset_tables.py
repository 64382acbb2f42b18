"""Every preset's per-level transformer and ResNet counts against the papers' tables, so a transcription slip fails.

Sources (/work/shared/reference/papers.md, checked against the talk transcript):
- SnapFusion's Table 3 ("Detailed architecture of our efficient UNet model"): per stage, # cross-attention
  (= whole transformer) blocks and # ResNet blocks, SD ("Origin") -> SnapFusion ("Ours"). Its "Mid" row is SD's
  attention-free 8x8 down level + mid block + 8x8 up level (the only reading that makes SD's column sum to 22).
- The talk's Table 1 (MobileDiffusion): totals only (conv blocks, SA + CA). The per-level layouts of the
  MobileDiffusion pair are our derivation (presets.py docstrings); they are pinned here so a change is deliberate.
- BK-SDM (Kim et al. 2023): SD-1.5 minus one unit per down level and two per up level, mid block removed.
"""

import pytest

from pocketdiff.arch import get_spec, list_presets

# stage: (latent res at 512px, channels, (transformers SD, SnapFusion), (ResNets SD, SnapFusion)) -- Table 3
TABLE3 = {
    "Down-1": (64, 320, (2, 0), (2, 2)),
    "Down-2": (32, 640, (2, 2), (2, 2)),
    "Down-3": (16, 1280, (2, 2), (2, 1)),
    "Mid": (8, 1280, (1, 1), (7, 4)),
    "Up-1": (16, 1280, (3, 3), (3, 2)),
    "Up-2": (32, 640, (3, 6), (3, 3)),
    "Up-3": (64, 320, (3, 0), (3, 3)),
}
# Table 3's stages as our spec's levels (down level i, up level i run at latent 64 / 2**i)
STAGE_LEVELS = {"Down-1": ["down0"], "Down-2": ["down1"], "Down-3": ["down2"], "Mid": ["down3", "mid", "up3"],
                "Up-1": ["up2"], "Up-2": ["up1"], "Up-3": ["up0"]}


def level_counts(spec) -> dict[str, tuple[int, int]]:
    """{level name: (transformers, ResNets)} for down<i>, mid, up<i>."""
    def count(blocks):
        return sum(b.kind == "tf" for b in blocks), sum(b.kind == "res" for b in blocks)
    out = {f"down{i}": count(b) for i, b in enumerate(spec.down)}
    out["mid"] = count(spec.mid)
    out.update({f"up{i}": count(b) for i, b in enumerate(spec.up)})
    return out


def stage_counts(spec) -> dict[str, tuple[int, int]]:
    lv = level_counts(spec)
    return {stage: tuple(sum(lv[name][k] for name in names) for k in (0, 1)) for stage, names in STAGE_LEVELS.items()}


@pytest.mark.parametrize("name, col", [("sd15", 0), ("snapfusion", 1)])
def test_table3_per_stage(name, col):
    spec = get_spec(name)
    got = stage_counts(spec)
    for stage, (res, ch, tfs, resnets) in TABLE3.items():
        assert got[stage] == (tfs[col], resnets[col]), (name, stage)
        level = int(STAGE_LEVELS[stage][0][-1]) if stage != "Mid" else 3
        assert spec.channels[level] == ch and 64 // 2 ** level == res, (name, stage)
    assert sum(t for t, _ in got.values()) == (16, 14)[col] and sum(r for _, r in got.values()) == (22, 17)[col]


def test_snapfusion_six_transformers_at_32x32():
    """The slip this file exists for: the 3 -> 6 change is at Up-2 (32x32, 640 channels), not Up-1 (16x16)."""
    lv = level_counts(get_spec("snapfusion"))
    assert lv["up1"] == (6, 3) and lv["up2"] == (3, 2)


# per level (transformers, ResNets): down0.., mid, up0..; talk's Table 1 totals (ResNets, SA, CA)
LAYOUTS = {
    "sd15": ([(2, 2), (2, 2), (2, 2), (0, 2)], (1, 2), [(3, 3), (3, 3), (3, 3), (0, 3)], (22, 16, 16)),
    "snapfusion": ([(0, 2), (2, 2), (2, 1), (0, 1)], (1, 1), [(0, 3), (6, 3), (3, 2), (0, 2)], (17, 14, 14)),
    "mobilediffusion": ([(0, 1), (1, 1), (2, 2)], (11, 0), [(0, 2), (1, 2), (3, 3)], (11, 15, 18)),
    "mobilediffusion-lite": ([(0, 1), (1, 1), (2, 2)], (8, 0), [(0, 2), (1, 2), (3, 3)], (11, 12, 15)),
    "bk-sdm-small": ([(1, 1), (1, 1), (1, 1), (0, 1)], (0, 0), [(2, 2), (2, 2), (2, 2), (0, 2)], None),
    "bk-sdm-tiny": ([(1, 1), (1, 1), (1, 1)], (0, 0), [(2, 2), (2, 2), (2, 2)], None),
}


def test_every_preset_is_pinned():
    assert sorted(LAYOUTS) == list_presets()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_per_level_counts(name):
    down, mid, up, totals = LAYOUTS[name]
    spec = get_spec(name)
    lv = level_counts(spec)
    assert [lv[f"down{i}"] for i in range(len(spec.down))] == down
    assert lv["mid"] == mid
    assert [lv[f"up{i}"] for i in range(len(spec.up))] == up
    if totals is not None:
        c = spec.counts()
        assert (c["resnets"], c["self_attn"], c["cross_attn"]) == totals
