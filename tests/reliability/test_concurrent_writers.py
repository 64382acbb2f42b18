"""Two processes writing the same output path leave one complete file (or model directory), never a mix, and a
reader polling the path meanwhile only ever sees one writer's complete content."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from pocketdiff.io import atomic_dir, write_text_atomic

N = 2_000_000  # 2 MB: large enough that a plain write would be seen half-done


def _write_file(path: str, char: str, times: int) -> None:
    for _ in range(times):
        write_text_atomic(path, char * N)


def _write_dir(path: str, char: str, times: int) -> None:
    for _ in range(times):
        with atomic_dir(path) as tmp:
            for i in range(4):
                (tmp / f"part{i}.bin").write_text(char * (N // 4))


def _race(target, path: Path, check) -> int:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(str(path), c, 15)) for c in "ab"]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        seen += check(path)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    check(path)
    return seen


def _check_file(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    assert text in ("a" * N, "b" * N), "a mixed or partial file"
    return 1


def _check_dir(path: Path) -> int:
    """Read the four parts through one directory descriptor: one version of the directory, as a loader sees it."""
    import os

    try:
        dfd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        parts = []
        for i in range(4):
            fd = os.open(f"part{i}.bin", os.O_RDONLY, dir_fd=dfd)
            with os.fdopen(fd) as f:
                parts.append(f.read())
    except FileNotFoundError:  # this version was replaced and is being removed: read again
        return 0
    finally:
        os.close(dfd)
    assert len(set("".join(parts))) == 1 and all(len(p) == N // 4 for p in parts), "a mixed or partial directory"
    return 1


def test_two_writers_one_file(tmp_path):
    target = tmp_path / "result.json"
    assert _race(_write_file, target, _check_file) > 0
    assert not [p for p in tmp_path.iterdir() if p != target]  # no temporary files left


def test_two_writers_one_model_directory(tmp_path):
    target = tmp_path / "unet"
    _race(_write_dir, target, _check_dir)
    assert _check_dir(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]
