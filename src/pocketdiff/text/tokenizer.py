"""A word-level tokenizer for a small captioned domain (Hugging Face `tokenizers`, wrapped for transformers).

One id per word of the domain vocabulary, plus `<pad>` (0), `<unk>` (1), `<bos>` (2), `<eos>` (3) and the
punctuation "," and ".". Text is NFKC-normalised and lower-cased, split on whitespace, and punctuation is split off
("circle," -> "circle", ","). Every prompt is encoded as `<bos> words... <eos> <pad>...` to exactly
`model_max_length` tokens, the fixed context the text encoder and UNet see (as SD's 77 for CLIP).

Context length: 24. The longest shapes-world caption is 18 words (+ bos/eos = 20), so 24 leaves room for
paraphrases without wasting cross-attention keys. An empty prompt gives `<bos> <eos> <pad>...`, the unconditional
input for classifier-free guidance.

Saved with `save_pretrained(dir)` (tokenizer.json + tokenizer_config.json) in a model directory's `tokenizer/`;
`load_tokenizer(dir)` accepts that folder or the model directory above it. In transformers 5 the class is
`PreTrainedTokenizerFast` (= `TokenizersBackend`, the name written in tokenizer_config.json).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pocketdiff.errors import DataError, ModelDirError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PUNCTUATION = (",", ".")
CONTEXT_LENGTH = 24


def _backend(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return tok


def build_tokenizer(words: Iterable[str], context_length: int = CONTEXT_LENGTH) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is the special tokens, punctuation, then `words` (lower-cased, sorted)."""
    if context_length < 3:
        raise DataError(f"context_length must be >= 3 (bos, one word, eos), got {context_length}")
    domain = sorted({w.lower() for w in words} - set(SPECIAL_TOKENS) - set(PUNCTUATION))
    bad = [w for w in domain if not w or any(c.isspace() for c in w)]
    if bad:
        raise DataError(f"vocabulary words must be non-empty and without spaces: {bad[:5]}")
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *PUNCTUATION, *domain])}
    return _wrap(_backend(vocab), context_length)


def words_from_texts(texts: Iterable[str], min_count: int = 1) -> list[str]:
    """The words (as the tokenizer splits them) that occur at least `min_count` times in `texts`."""
    splitter = _backend({PAD: 0, UNK: 1, BOS: 2, EOS: 3})
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in _split(splitter, text):
            counts[word] = counts.get(word, 0) + 1
    return sorted(w for w, c in counts.items() if c >= min_count and w not in PUNCTUATION)


def _wrap(backend: Tokenizer, context_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=context_length, padding_side="right",
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
    )


def _split(backend: Tokenizer, text: str) -> list[tuple[str, tuple[int, int]]]:
    return backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load from a `tokenizer/` folder or from a model directory that contains one."""
    from ..loading import load_tokenizer_dir

    path = Path(path)
    if (path / "tokenizer" / "tokenizer.json").is_file():
        path = path / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise ModelDirError(f"{path}: no tokenizer.json (run `pocketdiff train tokenizer` or pass a model directory)")
    return load_tokenizer_dir(path.parent, path.name, PreTrainedTokenizerFast)


def is_word_level(tokenizer) -> bool:
    """Whether `tokenizer` is this module's word-level tokenizer (else: a model's own, e.g. SD-1.5's CLIP BPE)."""
    return hasattr(tokenizer, "backend_tokenizer") and BOS in tokenizer.get_vocab()


def tokenize_prompts(tokenizer: PreTrainedTokenizerFast, prompts: str | Sequence[str], warn: bool = True) -> torch.Tensor:
    """Prompts -> input ids [B, model_max_length] (bos, words, eos, pads). Any other tokenizer (a teacher's CLIP
    BPE) pads and truncates to its own `model_max_length` (77 for SD-1.5).

    Word-level: warns (`warnings.warn`) naming words outside the vocabulary (they become `<unk>`) and prompts longer than
    the context (truncated; `<eos>` is kept)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not all(isinstance(p, str) for p in prompts):
        raise DataError("prompts must be strings")
    length = tokenizer.model_max_length
    if not is_word_level(tokenizer):  # a model's own tokenizer (SD-1.5's CLIP BPE): its own padding and truncation
        return tokenizer(list(prompts), padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt").input_ids
    if warn:
        vocab, backend = tokenizer.get_vocab(), tokenizer.backend_tokenizer
        for prompt in prompts:
            words = [w for w, _ in _split(backend, prompt)]
            unknown = sorted({w for w in words if w not in vocab})
            if unknown:
                warnings.warn(f"unknown words {unknown} in prompt {prompt!r}: encoded as {UNK}", stacklevel=3)
            if len(words) + 2 > length:
                warnings.warn(
                    f"prompt {prompt!r} has {len(words)} tokens, more than the context of {length - 2} words: "
                    "truncated", stacklevel=3)
    enc = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return enc["input_ids"]
