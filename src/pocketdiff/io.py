"""Atomic file writes: the project's rule is that checkpoints and outputs are written to a temporary file beside the
target and renamed over it, so that a crash or Ctrl-C never leaves half a file and readers (a plot, a report, another
process polling a JSON result) only ever see the old or the new content. One implementation, here, for every writer.

    with atomic_path(out / "plot.png") as tmp:   # tmp keeps the suffix: matplotlib / PIL infer the format from it
        fig.savefig(tmp)
    write_json_atomic(out / "result.json", result)
    write_text_atomic(out / "report.md", text)
    with atomic_dir(out / "unet") as tmp:       # a whole model directory (save_pretrained) swapped in at the end
        unet.save_pretrained(tmp)

Files get the mode a plain `open(path, "w")` gives a new file (0o666 & ~umask), not `tempfile.mkstemp`'s 0o600
(nor the 0o600 that safetensors' `save_file` gives the weights it writes).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a new empty temporary file beside `path` (hidden: `.{name}.{random}.tmp{suffix}`; it ends in `path`'s
    suffix so writers that infer the format from it still work); on success rename it over `path` (`os.replace`,
    atomic on POSIX), on any exception remove it and re-raise. The parent directory is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        tmp.chmod(mode)  # a writer that recreates the file (safetensors' save_file does, as 0o600) loses the umask's mode
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty directory beside `path` (`{name}.tmp`, replacing one a crash left); on success give the files
    written into it the mode `open(path, "w")` would, fsync them and the directories, and swap it in for `path` in one
    atomic step (`publish_dir`), so that a kill at any point leaves the old or the new directory at `path`, never
    none and never half of one; on any exception remove it and re-raise."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(path.parent):  # concurrent writers of one directory take turns: the last complete one wins
        recover_dir(path)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            mode = _new_file_mode(tmp)
            for f in tmp.rglob("*"):
                if f.is_file():
                    f.chmod(mode)
                    _fsync(f)
            for d in [*(d for d in tmp.rglob("*") if d.is_dir()), tmp]:
                _fsync(d)
            publish_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` itself (POSIX; no lock file left behind; released if the holder dies)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish_dir(new: str | Path, path: str | Path) -> None:
    """Put directory `new` at `path` atomically and remove the old content; fsync the parent directory. Linux:
    `renameat2(RENAME_EXCHANGE)` swaps the two in one step. Elsewhere the old directory is first renamed to
    `{name}.old` and `recover_dir` (called by `atomic_dir` and the loaders) puts it back after a crash in between."""
    new, path = Path(new), Path(path)
    if path.exists() and _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old content
    else:
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    _fsync(path.parent)


def recover_dir(path: str | Path) -> None:
    """Undo a crash between the two renames of `publish_dir`'s fallback: `{name}.old` left, nothing at `path`."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (OSError, AttributeError):  # no renameat2 in this libc
        return False


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that the new names and renames in it survive a power cut."""
    _fsync(Path(path))


def _fsync(path: Path) -> None:
    # the data must reach the disk before the rename does, or a power cut could leave the new name on an empty file
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file_mode(directory: Path) -> int:
    """The mode the umask gives a new file (read from a probe file, for the reason in `_create_temp`)."""
    probe = _create_temp(directory / "mode")
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def _create_temp(path: Path) -> Path:
    # O_CREAT with mode 0o666 lets the kernel apply the umask, exactly as open(path, "w") does (no process-wide
    # os.umask() round trip, which would race with other threads); O_EXCL makes the random name ours alone.
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON (indent 2, trailing newline; sets, tuples and arrays as lists, anything else unknown as
    its str) to `path` atomically. Returns `path` as a Path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (as `Path.write_text` would, but never half a file). Returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_png_atomic(path: str | Path, image: Any) -> Path:
    """Write a uint8 HxWx3 array as a PNG to `path` atomically. Returns `path`."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp)
    return path


def _json_default(o: Any):
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


__all__ = ["atomic_dir", "atomic_path", "fsync_dir", "publish_dir", "recover_dir", "write_json_atomic", "write_png_atomic", "write_text_atomic"]
