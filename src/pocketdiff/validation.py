"""Validation at the edge: every command checks its options' domains and its output paths before any model loads,
so that bad input fails in a second with one message naming the option, the value and what is allowed (an eval
that runs 20 minutes must not fail at its last line because `--json` points into a read-only directory).

    check_int("--steps", steps, 1, 1000, "the scheduler's training steps")
    check_float("--guidance", g, 0, finite=True)
    check_output_file("-o", out, (".png",))      # not a directory, right extension, its directory writable
    check_output_dir("--out", run_dir)

Errors are `OptionError` (a `PocketDiffError`: the CLI prints `error: ...` and exits 2).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import PocketDiffError


class OptionError(PocketDiffError, ValueError):
    """A command-line option outside its domain, or an output path that cannot be written."""


def check_int(option: str, value, lo: int | None = None, hi: int | None = None, why: str = "") -> None:
    """`value` an integer in [lo, hi] (either bound optional)."""
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and (lo is None or value >= lo) and \
        (hi is None or value <= hi)
    if not ok:
        raise OptionError(f"{option} {value}: must be an integer {_range(lo, hi)}{f' ({why})' if why else ''}")


def check_float(option: str, value, lo: float | None = None, hi: float | None = None, why: str = "",
                lo_open: bool = False) -> None:
    """`value` a finite number in [lo, hi] ((lo, hi] with lo_open)."""
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and \
        (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        rng = _range(lo, hi, lo_open)
        raise OptionError(f"{option} {value}: must be a finite number {rng}{f' ({why})' if why else ''}")


def _range(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'>' if lo_open else 'from'} {lo:g} {'and <=' if lo_open else 'to'} {hi:g}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"<= {hi:g}" if hi is not None else ""


def _writable_dir(option: str, path: Path, what: str) -> None:
    """The nearest existing ancestor of `path` must be a directory we can create files in (probed, since
    `os.access` says yes to root on a read-only file system)."""
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{option} {path}: {parent} is a file, not a directory; {what} cannot be created there")
    probe = parent / f".pocketdiff-write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except FileExistsError:
        pass
    except OSError as e:
        raise OptionError(f"{option} {path}: cannot write in {parent} ({e.strerror or e}); choose a writable "
                          "location") from None


def check_output_file(option: str, path, suffixes: tuple[str, ...] | None = None) -> None:
    """An output file: not a directory, ending in one of `suffixes` (lower case, with the dot), in a writable place."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OptionError(f"{option} {path}: is a directory; give a file name"
                          + (f" ending in {' or '.join(suffixes)}" if suffixes else ""))
    if suffixes and path.suffix.lower() not in suffixes:
        raise OptionError(f"{option} {path}: must end in {' or '.join(suffixes)} (the file is written in that format)")
    _writable_dir(option, path.parent if path.parent != Path("") else Path("."), "the file")


def check_output_dir(option: str, path) -> None:
    """An output directory: a directory if it exists, else creatable, in a writable place."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path}: exists and is not a directory")
    _writable_dir(option, path, "the directory")


__all__ = ["OptionError", "check_float", "check_int", "check_output_dir", "check_output_file"]
