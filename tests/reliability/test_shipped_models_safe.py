"""No command replaces a shipped model unless the user names its directory: every stage's quick preset, run as the
README says (`pocketdiff train STAGE --preset quick --out DIR`), exports inside its run directory and leaves
`models/` byte-for-byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pocketdiff.training.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Content and modification time of every file: a rewrite with the same bytes counts as touching it too."""
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not (MODELS / "shapes" / "unet").is_dir(), reason="needs the shipped models")
def test_every_quick_preset_leaves_models_untouched(tmp_path, monkeypatch):
    from pocketdiff.cli import main

    monkeypatch.chdir(ROOT)  # the default configs and model directories, as a user in a checkout has them
    before = _tree(MODELS)
    for name in STAGES:
        run = tmp_path / name
        with pytest.raises(SystemExit) as e:  # typer exits 0 on success
            main(["train", name, "--preset", "quick", "--out", str(run), "--set", "max_steps=1",
                  "--set", "eval_every=0", "--set", "sample_every=0"])
        assert e.value.code in (0, None), name
        exports = [p for p in (run / "export").iterdir() if p.is_dir()]
        assert exports and all(any(p.iterdir()) for p in exports), f"{name}: nothing exported inside {run}"
    assert _tree(MODELS) == before


def test_export_option_is_honoured(tmp_path):
    """Naming the directory (--export) is how a user publishes a model, the shipped one included."""
    from pocketdiff.cli import main

    target = tmp_path / "published" / "tokenizer"
    with pytest.raises(SystemExit) as e:
        main(["train", "tokenizer", "--preset", "quick", "--out", str(tmp_path / "run"), "--export", str(target)])
    assert e.value.code in (0, None)
    assert (target / "tokenizer.json").is_file() and not (tmp_path / "run" / "export").exists()
