"""pocketdiff.io: atomic writes (temp file beside the target + rename), normal file modes."""

import json
import os
import stat

import numpy as np
import pytest

from pocketdiff.io import atomic_dir, atomic_path, write_json_atomic, write_text_atomic


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


@pytest.fixture
def restore_umask():
    """Tests set the process umask explicitly; put the old one back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_atomic_path_writes_and_renames(tmp_path):
    target = tmp_path / "sub" / "dir" / "out.png"  # parents are created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.startswith(".out.png.") and tmp.suffix == ".png"  # hidden, format-detecting suffix kept
        assert tmp.exists() and not target.exists()  # the target only appears on success
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert _leftovers(target.parent) == []


def test_atomic_path_replaces_existing_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old content until the rename
    assert target.read_text() == "new" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_keeps_old_file_and_removes_temp(tmp_path, exc):
    target = tmp_path / "result.json"
    target.write_text('{"old": 1}\n')
    seen = []
    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            seen.append(tmp)
            raise exc("boom")
    assert target.read_text() == '{"old": 1}\n'
    assert not seen[0].exists() and _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_exception_without_old_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_content_and_format(tmp_path):
    obj = {"a": 1, "s": {3}, "t": (1, 2), "arr": np.arange(3), "p": tmp_path}
    out = write_json_atomic(str(tmp_path / "x" / "r.json"), obj)
    assert out == tmp_path / "x" / "r.json"
    text = out.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "a": 1,')  # indent 2, trailing newline
    assert json.loads(text) == {"a": 1, "s": [3], "t": [1, 2], "arr": [0, 1, 2], "p": str(tmp_path)}
    assert _leftovers(out.parent) == []


def test_write_json_atomic_unserialisable_keeps_old(tmp_path):
    out = write_json_atomic(tmp_path / "r.json", {"v": 1})
    with pytest.raises(ValueError):  # a circular reference fails half-way through json.dump
        d: dict = {}
        d["self"] = d
        write_json_atomic(out, {"v": 2, "d": d})
    assert json.loads(out.read_text()) == {"v": 1} and _leftovers(tmp_path) == []


def test_write_text_atomic(tmp_path):
    out = write_text_atomic(tmp_path / "report.md", "# hi\n")
    assert out.read_text() == "# hi\n"
    write_text_atomic(out, "# again\n")
    assert out.read_text() == "# again\n" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_mode_follows_umask(tmp_path, restore_umask, mask):
    import torch
    from safetensors.torch import save_file

    os.umask(mask)
    expected = 0o666 & ~mask
    j = write_json_atomic(tmp_path / "r.json", {"a": 1})
    t = write_text_atomic(tmp_path / "r.txt", "x")
    with atomic_path(tmp_path / "r.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "w.safetensors") as tmp:  # safetensors replaces the temp file with a 0o600 one
        save_file({"w": torch.zeros(2)}, str(tmp))
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    for p in (j, t, tmp_path / "r.bin", tmp_path / "w.safetensors", plain):
        assert stat.S_IMODE(p.stat().st_mode) == expected, (p.name, oct(p.stat().st_mode))


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_dir_swaps_in_and_fixes_safetensors_modes(tmp_path, restore_umask, mask):
    import torch
    from safetensors.torch import save_file

    os.umask(mask)
    out = tmp_path / "unet"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert not (tmp / "old.txt").exists()
        save_file({"w": torch.zeros(2)}, str(tmp / "w.safetensors"))  # safetensors itself writes 0o600
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["sub", "w.safetensors"]
    assert _leftovers(tmp_path) == []
    for p in (out / "w.safetensors", out / "sub" / "config.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, (p.name, oct(p.stat().st_mode))


def test_atomic_dir_exception_keeps_old_directory(tmp_path):
    out = tmp_path / "unet"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("crash mid-save")
    assert (out / "config.json").read_text() == "old" and _leftovers(tmp_path) == []


def test_image_writers_infer_format_from_temp_suffix(tmp_path):
    from PIL import Image

    target = tmp_path / "img.png"
    with atomic_path(target) as tmp:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp)  # PIL picks the format from the suffix
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
