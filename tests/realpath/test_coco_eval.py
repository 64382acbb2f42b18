"""`pocketdiff eval --protocol coco` on the tiny fixture with tiny stand-in networks: a random TorchScript network
with the FID Inception's call signature (64 features, not Inception-v3) and a random tiny transformers CLIP. They
check the protocol's plumbing (captions, reference statistics, the guidance sweep, N in the output, errors), not
the values of FID or CLIP score."""

import json
import types

import pytest
import torch

from pocketdiff.errors import DataError


@pytest.fixture
def run(capsys):
    """The CLI in this process (a subprocess would pay the imports again): returncode, stdout, stderr."""
    from pocketdiff.cli import main

    def call(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from pocketdiff.testing import make_clip_dir, make_inception_standin

    root = tmp_path_factory.mktemp("standins")
    return make_inception_standin(root / "inception.pt"), make_clip_dir(root / "clip")


def test_coco_eval_sweeps_guidance_and_reuses_reference_stats(sd15_dir, caption_folder, standins, tmp_path, run):
    inception, clip = standins
    captions = tmp_path / "captions.json"  # COCO's annotation format: one caption per image id, the first listed
    captions.write_text(json.dumps({"annotations": [
        {"image_id": 7, "caption": "a blue square"}, {"image_id": 3, "caption": "a red circle"},
        {"image_id": 3, "caption": "not this one"}, {"image_id": 9, "caption": "a green cross"}]}))
    common = ["eval", "--model", str(sd15_dir), "--protocol", "coco", "--captions", str(captions),
              "--inception-weights", str(inception), "--clip-model", str(clip), "--steps", "2", "--n", "2",
              "--guidance", "1,4", "--batch-size", "2"]
    stats, reference = tmp_path / "ref.safetensors", tmp_path / "reference"
    reference.mkdir()
    for f in caption_folder.glob("*.png"):
        (reference / f.name).write_bytes(f.read_bytes())
    (reference / "zz_truncated.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    r = run(*common, "--reference-images", str(reference), "--save-reference-stats", str(stats),
            "--json", str(tmp_path / "a.json"), "--save-images", str(tmp_path / "images"))
    assert r.returncode == 0, r.stderr
    assert "N = 2 captions" in r.stdout.replace("\n", " ")
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["n"] == 2 and [x["guidance"] for x in a["results"]] == [1.0, 4.0]
    assert all(x["n"] == 2 and x["n_reference"] == 8 and x["reference_unreadable"] == 1 and x["fid"] > 0
               and 0 <= x["clip_score"] <= 100
               for x in a["results"])
    index = json.loads((tmp_path / "images" / "w4" / "index.json").read_text())
    assert [v["prompt"] for v in index.values()] == ["a red circle", "a blue square"]  # image-id order, first caption
    assert a["results"][0]["fid"] != a["results"][1]["fid"]  # the sweep really changes the images
    r = run(*common, "--reference-images", str(stats), "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "b.json").read_text())
    for x, y in zip(a["results"], b["results"]):  # statistics reproduce the directory's FID
        assert y["fid"] == pytest.approx(x["fid"], rel=1e-6) and y["clip_score"] == pytest.approx(x["clip_score"])


def test_missing_weights_name_what_to_download(sd15_dir, caption_folder, standins, tmp_path, run):
    inception, clip = standins
    (tmp_path / "c.txt").write_text("a red circle\na blue square\n")
    base = ["eval", "--model", str(sd15_dir), "--protocol", "coco", "--captions", str(tmp_path / "c.txt"),
            "--reference-images", str(caption_folder)]
    r = run(*base, "--inception-weights", str(tmp_path / "none.pt"), "--clip-model", str(clip))
    assert r.returncode == 2 and "inception-2015-12-05.pt" in r.stderr and "Traceback" not in r.stderr
    r = run(*base, "--inception-weights", str(inception), "--clip-model", str(tmp_path))
    assert r.returncode == 2 and "huggingface-cli download" in r.stderr
    r = run(*base[:-2], "--inception-weights", str(inception), "--clip-model", str(clip))
    assert r.returncode == 2 and "--reference-images" in r.stderr


def test_clip_score_is_100_times_the_clamped_cosine(standins, caption_folder):
    from pocketdiff.evaluation.coco import CocoMetrics

    inception, clip = standins
    m = CocoMetrics(inception, clip, caption_folder)
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).numpy()
    m.add(images, ["a red circle", "a blue square"])
    clip, processor = m.clip.model, m.clip.processor
    inputs = processor(text=["a red circle", "a blue square"], images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = clip.visual_projection(clip.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        txt = clip.text_projection(clip.text_model(input_ids=inputs["input_ids"]).pooler_output)
    cos = torch.nn.functional.cosine_similarity(img, txt)
    assert m.clip_scores == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-4)


def test_captions_file_checks(tmp_path):
    from pocketdiff.evaluation.coco import load_captions

    (tmp_path / "c.txt").write_text("one\n\ntwo\nthree\n")
    assert load_captions(tmp_path / "c.txt", 2) == ["one", "two"]
    with pytest.raises(DataError, match="only 3 captions"):
        load_captions(tmp_path / "c.txt", 5)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO caption file"):
        load_captions(tmp_path / "bad.json")
