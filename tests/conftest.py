import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# generate/eval default to `--backend auto`, which exports the model once and times it: tests run eager PyTorch
# unless they ask for a backend (tests/export covers auto)
os.environ.setdefault("POCKETDIFF_BACKEND", "torch")

import pytest


@pytest.fixture(scope="session")
def quick_model_dir(tmp_path_factory):
    """A complete (untrained, seconds-to-build) shapes-world model directory: every stage's `--preset quick`."""
    from pocketdiff.training.run import run_stage

    root = tmp_path_factory.mktemp("quick_model")
    run_stage("tokenizer", preset="quick", out=root / "runs/tokenizer", overrides={"export_dir": str(root / "tokenizer")})
    run_stage("clip", preset="quick", out=root / "runs/clip",
              overrides={"export_dir": str(root / "text_encoder"), "options": {"tokenizer_dir": str(root / "tokenizer")}})
    run_stage("vae", preset="quick", out=root / "runs/vae", overrides={"export_dir": str(root / "vae")})
    run_stage("teacher", preset="quick", out=root / "runs/teacher",
              overrides={"export_dir": str(root / "unet"), "options": {"model_dir": str(root)}})
    return root
