import json

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(quick_model_dir, tmp_path_factory):
    """The quick model with a shallower UNet (2 levels, random weights): exporters' time grows with the graph's node
    count, not its width, so export tests use few blocks to stay at seconds."""
    import torch

    from pocketdiff.arch.unet import FlexUNet

    root = tmp_path_factory.mktemp("tiny_export_model")
    for c in quick_model_dir.iterdir():
        if c.name != "unet":
            (root / c.name).symlink_to(c)
    cfg = json.loads((quick_model_dir / "unet" / "config.json").read_text())
    tf = {"kind": "tf", "head_dim": 8, "heads": None}
    cfg.update(channels=cfg["channels"][:2], down=[["res", tf], ["res"]], mid=["res", tf, "res"],
               up=[["res", tf, "res", tf], ["res", "res"]], name="tiny-export")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    torch.manual_seed(0)
    FlexUNet.from_config(cfg).save_pretrained(root / "unet")
    return root
