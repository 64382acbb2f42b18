"""The trainers take a user's folder of images + captions through the same code path as the shapes world."""

import numpy as np
from PIL import Image

from pocketdiff.training.run import run_stage
from pocketdiff.data.shapes import caption, render, sample_scene


def make_folder(root, n=8):
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        scene = sample_scene(rng)
        Image.fromarray(render(scene, 64, rng)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(caption(scene, rng))
    return root


def test_vae_and_teacher_train_on_a_user_folder(quick_model_dir, tmp_path, monkeypatch):
    import pocketdiff.data.folder as folder_module

    folder = make_folder(tmp_path / "mydata")
    captions = {p.name: p.with_suffix(".txt").read_text() for p in folder.glob("*.png")}
    read = []  # (image file, its caption) of every item the trainers took: the folder's data, not the shapes world
    get_item = folder_module.ImageCaptionFolder.__getitem__

    def spy(self, index):
        item = get_item(self, index)
        read.append((self.items[index][0].name, item["caption"]))
        return item

    monkeypatch.setattr(folder_module.ImageCaptionFolder, "__getitem__", spy)
    vae = run_stage("vae", preset="quick", out=tmp_path / "runs/vae",
                    overrides={"export_dir": str(tmp_path / "vae"), "options": {"data": str(folder)}})
    assert vae["step"] == 5 and (tmp_path / "vae" / "config.json").is_file()
    assert len(read) >= 5 * 4 and all(captions[name] == text for name, text in read)  # 5 steps of batch 4
    n_vae = len(read)
    model = tmp_path / "model"
    import shutil

    shutil.copytree(quick_model_dir, model, ignore=shutil.ignore_patterns("runs", "unet"))
    teacher = run_stage("teacher", preset="quick", out=tmp_path / "runs/teacher",
                        overrides={"export_dir": str(model / "unet"), "options": {"model_dir": str(model), "data": str(folder)}})
    assert teacher["step"] == 4 and (model / "unet" / "config.json").is_file()
    assert len(read) - n_vae >= 4 * 4 and all(captions[name] == text for name, text in read[n_vae:])
