import json

import numpy as np
import pytest
import torch
from PIL import Image

from pocketdiff.data.folder import ImageCaptionFolder
from pocketdiff.errors import DataError


def _image(path, size=(80, 60), color=(200, 10, 10)):
    Image.new("RGB", size, color).save(path)


def test_txt_captions_resize_and_crop(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.jpg", size=(40, 100), color=(0, 0, 255))
    (tmp_path / "a.txt").write_text("a red square\n")
    (tmp_path / "b.txt").write_text("a blue square")
    ds = ImageCaptionFolder(tmp_path, size=64)
    assert len(ds) == 2
    item = ds[0]
    assert item["caption"] == "a red square"
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert torch.allclose(item["pixel_values"][:, 32, 32], torch.tensor([200, 10, 10]) / 127.5 - 1, atol=0.02)
    assert ds[1]["pixel_values"].shape == (3, 64, 64)


def test_jsonl_and_csv_captions(tmp_path):
    _image(tmp_path / "x.png")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "x.png", "caption": "from jsonl"}) + "\n")
    assert ImageCaptionFolder(tmp_path)[0]["caption"] == "from jsonl"
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text('file,caption\nx.png,"from csv, with a comma"\n')
    assert ImageCaptionFolder(tmp_path)[0]["caption"] == "from csv, with a comma"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        ImageCaptionFolder(tmp_path)
    _image(tmp_path / "lonely.png")
    with pytest.raises(DataError, match="lonely.png"):
        ImageCaptionFolder(tmp_path)
    (tmp_path / "lonely.txt").write_text("caption")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("caption")
    with pytest.raises(DataError, match="broken.png"):
        ImageCaptionFolder(tmp_path)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "captions.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="captions.jsonl:1"):
        ImageCaptionFolder(tmp_path)


def test_works_with_dataloader(tmp_path):
    for i in range(3):
        _image(tmp_path / f"{i}.png", color=tuple(np.random.default_rng(i).integers(0, 255, 3).tolist()))
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    batch = next(iter(torch.utils.data.DataLoader(ImageCaptionFolder(tmp_path), batch_size=3)))
    assert batch["pixel_values"].shape == (3, 3, 64, 64) and batch["caption"] == ["caption 0", "caption 1", "caption 2"]
