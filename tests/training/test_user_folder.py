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


def test_vae_and_teacher_train_on_a_user_folder(quick_model_dir, tmp_path):
    folder = make_folder(tmp_path / "mydata")
    vae = run_stage("vae", preset="quick", out=tmp_path / "runs/vae",
                    overrides={"export_dir": str(tmp_path / "vae"), "options": {"data": str(folder)}})
    assert vae["step"] == 5 and (tmp_path / "vae" / "config.json").is_file()
    model = tmp_path / "model"
    import shutil

    shutil.copytree(quick_model_dir, model, ignore=shutil.ignore_patterns("runs", "unet"))
    teacher = run_stage("teacher", preset="quick", out=tmp_path / "runs/teacher",
                        overrides={"export_dir": str(model / "unet"), "options": {"model_dir": str(model), "data": str(folder)}})
    assert teacher["step"] == 4 and (model / "unet" / "config.json").is_file()
