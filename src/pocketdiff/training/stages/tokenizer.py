"""Stage `tokenizer`: nothing to optimise; builds the word-level vocabulary and exports `tokenizer/`.

`options.source`: "shapes" takes `pocketdiff.data.shapes.VOCABULARY`; a folder path (an `ImageCaptionFolder`)
collects the words of its captions that occur at least `min_count` times (rarer words become `<unk>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pocketdiff.errors import DataError
from pocketdiff.text.tokenizer import CONTEXT_LENGTH, build_tokenizer, words_from_texts
from pocketdiff.training.loop import Stage


def folder_captions(root: str) -> list[str]:
    from pocketdiff.data.folder import ImageCaptionFolder

    ds = ImageCaptionFolder(root)
    captions = getattr(ds, "captions", None)
    return list(captions) if captions is not None else [ds[i]["caption"] for i in range(len(ds))]


class TokenizerStage(Stage):
    """Build the word-level tokenizer (no optimisation) and export tokenizer/."""

    name = "tokenizer"

    @dataclass
    class Options:
        source: str = "shapes"
        context_length: int = CONTEXT_LENGTH
        min_count: int = 1

    def make_tokenizer(self):
        if self.opts.source == "shapes":
            from pocketdiff.data.shapes import VOCABULARY

            words = VOCABULARY
        elif Path(self.opts.source).is_dir():
            words = words_from_texts(folder_captions(self.opts.source), self.opts.min_count)
        else:
            raise DataError(f"options.source: {self.opts.source!r} is neither 'shapes' nor a folder")
        return build_tokenizer(words, self.opts.context_length)

    def build(self):
        self.tokenizer = self.make_tokenizer()
        return {}

    def evaluate(self, models, frozen):
        return {"vocab_size": len(self.tokenizer), "context_length": self.tokenizer.model_max_length}

    def export(self, models, frozen, export_dir: Path) -> None:
        from pocketdiff.io import atomic_dir

        with atomic_dir(export_dir) as tmp:
            self.tokenizer.save_pretrained(str(tmp))
