"""Word-level tokenizer: vocabulary, specials, context, warnings, save/load."""

from __future__ import annotations

import warnings

import pytest

from pocketdiff.data.shapes import VOCABULARY
from pocketdiff.errors import ModelDirError
from pocketdiff.text.tokenizer import CONTEXT_LENGTH, build_tokenizer, load_tokenizer, tokenize_prompts, words_from_texts


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(VOCABULARY)


def test_vocabulary_and_specials(tok):
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("<pad>", "<unk>", "<bos>", "<eos>")] == [0, 1, 2, 3]
    assert set(VOCABULARY) <= set(vocab) and {",", "."} <= set(vocab)
    assert len(tok) == len(VOCABULARY) + 6 and tok.model_max_length == CONTEXT_LENGTH


def test_encoding_lowercase_punctuation_padding(tok):
    ids = tokenize_prompts(tok, ["A Red circle, LEFT of a blue square", "red circle"])
    assert ids.shape == (2, CONTEXT_LENGTH)
    words = tok.convert_ids_to_tokens(ids[0].tolist())
    assert words[:10] == ["<bos>", "a", "red", "circle", ",", "left", "of", "a", "blue", "square"]
    assert words[10] == "<eos>" and set(words[11:]) == {"<pad>"}


def test_empty_prompt_is_unconditional(tok):
    ids = tokenize_prompts(tok, "")[0].tolist()
    assert ids[:2] == [2, 3] and set(ids[2:]) == {0}


def test_unknown_words_warn_by_name(tok):
    with pytest.warns(UserWarning, match=r"unknown words \['dragon', 'teal'\]"):
        ids = tokenize_prompts(tok, "a teal dragon on the left")
    assert (ids == 1).sum() == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize_prompts(tok, "a red circle on the left")  # known words: silent


def test_long_prompt_truncated_with_warning(tok):
    long = " ".join(["red"] * 40)
    with pytest.warns(UserWarning, match="truncated"):
        ids = tokenize_prompts(tok, long)
    assert ids.shape == (1, CONTEXT_LENGTH) and ids[0, -1].item() == 3  # <eos> kept


def test_save_load_roundtrip(tok, tmp_path):
    tok.save_pretrained(str(tmp_path / "model" / "tokenizer"))
    for path in (tmp_path / "model", tmp_path / "model" / "tokenizer"):  # model dir or its tokenizer/
        loaded = load_tokenizer(path)
        assert loaded.get_vocab() == tok.get_vocab() and loaded.model_max_length == CONTEXT_LENGTH
        assert tokenize_prompts(loaded, "a red circle").tolist() == tokenize_prompts(tok, "a red circle").tolist()
    with pytest.raises(ModelDirError):
        load_tokenizer(tmp_path / "nothing")


def test_words_from_captions():
    words = words_from_texts(["A cat, a dog.", "a cat"], min_count=2)
    assert words == ["a", "cat"]
    tok = build_tokenizer(words, context_length=8)
    assert tokenize_prompts(tok, "a cat").shape == (1, 8)


def test_tokenizer_stage(tmp_path):
    from pocketdiff.training.run import run_stage

    summary = run_stage("tokenizer", "tokenizer", "quick", out=tmp_path / "run",
                        overrides={"export_dir": str(tmp_path / "tokenizer")})
    assert summary["vocab_size"] == len(VOCABULARY) + 6
    assert load_tokenizer(tmp_path / "tokenizer").get_vocab()["<eos>"] == 3
