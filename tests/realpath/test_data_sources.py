"""The user's data at scale: webdataset shards (streamed, split by process), parquet / `datasets` tables, a latent
cache; bad data (a corrupt image, a missing caption, an empty shard) skipped and counted, never a crash."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pocketdiff.errors import DataError


def png(color, size=40):
    buf = io.BytesIO()
    Image.new("RGB", (size, size + 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """shard 0: 3 good samples, a corrupt image, a sample without caption; shard 1: 2 good (one captioned in json);
    shard 2: empty."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("shards")
    with wds.TarWriter(str(root / "00000.tar")) as w:
        for i, c in enumerate(["a red circle", "a blue square", "a green cross"]):
            w.write({"__key__": f"a{i}", "png": png((200, 20 * i, 0)), "txt": c})
        w.write({"__key__": "bad", "jpg": b"not an image", "txt": "a broken one"})
        w.write({"__key__": "nocap", "png": png((0, 0, 0))})
    with wds.TarWriter(str(root / "00001.tar")) as w:
        w.write({"__key__": "b0", "png": png((0, 200, 0)), "txt": "a yellow diamond"})
        w.write({"__key__": "b1", "png": png((0, 0, 200)), "json": json.dumps({"caption": "a purple square"})})
    (root / "00002.tar").write_bytes(b"")
    return root


def take(source, n):
    it = iter(source)
    return [next(it) for _ in range(n)]


def test_webdataset_stream_skips_and_counts_bad_samples(shards):
    from pocketdiff.data.sources import WebDataSource

    with pytest.warns(UserWarning, match="1 of 3 shards are empty"):
        src = WebDataSource(str(shards), size=32, shuffle_buffer=1)
    examples = take(src, 11)  # two epochs of 5 good samples and one more: the stream is endless
    assert all(e["pixel_values"].shape == (3, 32, 32) for e in examples)
    assert -1 <= float(torch.stack([e["pixel_values"] for e in examples]).min()) and all(e["caption"] for e in examples)
    assert sorted(e["caption"] for e in examples[:5]) == ["a blue square", "a green cross", "a purple square",
                                                          "a red circle", "a yellow diamond"]
    # corrupt image + missing caption, in each of two epochs (a skip is counted on the next good example)
    assert sum(e["skipped"] for e in examples) == 4
    with pytest.warns(UserWarning):
        shuffled = take(WebDataSource(str(shards), size=32, shuffle_buffer=100), 10)
    assert [e["caption"] for e in shuffled[:5]] != [e["caption"] for e in shuffled[5:]]  # reshuffled each epoch


def test_webdataset_shards_are_split_over_processes(shards, monkeypatch):
    from pocketdiff.data.sources import WebDataSource

    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        with pytest.warns(UserWarning):
            src = WebDataSource(str(shards), size=16, shuffle_buffer=1)
        seen[rank] = {e["caption"] for e in take(src, 6)}
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 5


@pytest.mark.filterwarnings("ignore:1 of 1 shards")
def test_a_source_of_only_empty_shards_is_an_error(tmp_path):
    from pocketdiff.data.sources import WebDataSource

    (tmp_path / "0.tar").write_bytes(b"")
    with pytest.raises(DataError, match="all 1 shards are empty"):
        WebDataSource(str(tmp_path), size=16)


def test_parquet_rows_bad_ones_are_none_and_batches_count_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pocketdiff.data.batches import open_dataset, random_batch

    table = pa.table({"image": [png((255, 0, 0)), b"garbage", png((0, 255, 0)), png((0, 0, 255))],
                      "caption": ["a red square", "broken", "", "a blue square"]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    src = open_dataset(str(tmp_path), 24)
    assert len(src) == 4 and src[1] is None and src[2] is None  # undecodable image, empty caption
    assert src[0]["caption"] == "a red square" and src[0]["pixel_values"].shape == (3, 24, 24)
    batch = random_batch(src, np.random.default_rng(0), 16)
    assert set(batch["caption"]) <= {"a red square", "a blue square"} and batch["skipped"] > 0
    import datasets  # a saved `datasets` directory reads the same

    datasets.Dataset.from_dict({"image": [png((9, 9, 9))], "text": ["a gray circle"]}).save_to_disk(tmp_path / "saved")
    assert open_dataset(str(tmp_path / "saved"), 16)[0]["caption"] == "a gray circle"


def test_vpred_trains_on_shards_and_counts_what_it_skipped(sd15_dir, shards, tmp_path):
    from pocketdiff.data.sources import WebDataSource
    from pocketdiff.training.run import run_stage

    with pytest.warns(UserWarning):
        s = run_stage("vpred", preset="quick", out=tmp_path / "run", overrides={
            "batch_size": 4, "export_dir": str(tmp_path / "model"),
            "options": {"teacher_dir": str(sd15_dir), "data": str(shards)}})
        expected = sum(e["skipped"] for e in take(WebDataSource(str(shards), 64), 3 * 4))  # 3 steps x 4
    assert s["step"] == 3 and s["data_skipped"] == expected and expected >= 2


def test_latent_cache_matches_the_encoder_and_trains(sd15_dir, vpred_dir, caption_folder, tmp_path, capsys):
    from pocketdiff.cli import main
    from pocketdiff.data.batches import open_dataset
    from pocketdiff.data.latent_cache import LatentCache
    from pocketdiff.diffusion import batch_latents
    from pocketdiff.models import load_vae
    from pocketdiff.training.run import run_stage

    with pytest.raises(SystemExit) as e:
        main(["data", "cache-latents", "--model", str(sd15_dir), "--data", str(caption_folder), "--out",
              str(tmp_path / "cache"), "--shard-size", "3", "--batch-size", "2", "--json", str(tmp_path / "c.json")])
    assert e.value.code in (0, None)
    index = json.loads((tmp_path / "c.json").read_text())
    assert index["n"] == 8 and len(index["shards"]) == 3 and index["skipped"] == 0
    cache = open_dataset(str(tmp_path / "cache"))
    assert isinstance(cache, LatentCache) and len(cache) == 8
    folder = open_dataset(str(caption_folder), 64)
    vae = load_vae(sd15_dir / "vae")
    for i in (0, 4, 7):  # shard boundaries: items 0-2, 3-5, 6-7
        assert cache[i]["caption"] == folder[i]["caption"]
        a = batch_latents(vae, {"pixel_values": folder[i]["pixel_values"][None], "noise_seed": 5})
        b = batch_latents(vae, {"latent_moments": cache[i]["latent_moments"][None], "noise_seed": 5})
        assert torch.allclose(a, b, atol=2e-2, rtol=1e-2)  # the same posterior sample, up to fp16 storage
    s = run_stage("student", preset="quick", out=tmp_path / "student", overrides={
        "export_dir": str(tmp_path / "unet"), "options": {"teacher_dir": str(vpred_dir), "data": str(tmp_path / "cache")}})
    assert s["step"] == 3 and s["data_skipped"] == 0
