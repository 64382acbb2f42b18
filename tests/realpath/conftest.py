import pytest


@pytest.fixture(scope="session")
def sd15_dir(tmp_path_factory):
    """A tiny SD-1.5-layout pipeline directory (epsilon prediction, CLIP BPE tokenizer), random weights."""
    from pocketdiff.testing import make_sd15_dir

    return make_sd15_dir(tmp_path_factory.mktemp("sd15") / "sd15")


@pytest.fixture(scope="session")
def caption_folder(tmp_path_factory):
    from pocketdiff.testing import make_caption_folder

    return make_caption_folder(tmp_path_factory.mktemp("data") / "images", n=8)


@pytest.fixture(scope="session")
def vpred_dir(sd15_dir, caption_folder, tmp_path_factory):
    """The fixture's teacher fine-tuned to v-prediction for 3 steps (`train vpred --preset quick`)."""
    from pocketdiff.training.run import run_stage

    root = tmp_path_factory.mktemp("vpred")
    run_stage("vpred", preset="quick", out=root / "run", overrides={
        "export_dir": str(root / "model"), "options": {"teacher_dir": str(sd15_dir), "data": str(caption_folder)}})
    return root / "model"
