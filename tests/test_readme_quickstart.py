"""The README's Python quickstart runs as written against the shipped model and writes the image it promises."""
import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_python_quickstart_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no ```python block"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 6, "the quickstart should stay a few lines"
    saved = re.search(r"\.save\(\"([^\"]+)\"\)", code)
    assert saved, "the quickstart should save its image"
    (tmp_path / "models").symlink_to(ROOT / "models")  # it names models/shapes relative to a clone's root
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    image = np.asarray(Image.open(tmp_path / saved.group(1)))
    assert image.shape == (64, 64, 3) and image.std() > 5  # an image, not a blank
