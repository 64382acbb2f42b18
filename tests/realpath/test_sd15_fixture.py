"""The tiny SD-1.5-layout fixture (pocketdiff.testing) is what the real path's tests run on: check it has SD-1.5's
layout and that the project's loaders read it as they read SD-1.5."""

import json

import torch

from pocketdiff.testing import bpe_vocab


def test_layout_is_sd15s(sd15_dir):
    index = json.loads((sd15_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert {p.name for p in (sd15_dir / "tokenizer").iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    sched = json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["prediction_type"], sched["beta_schedule"], sched["_class_name"]) == ("epsilon", "scaled_linear",
                                                                                         "PNDMScheduler")
    unet = json.loads((sd15_dir / "unet" / "config.json").read_text())
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]


def test_bpe_tokenizer_merges_frequent_words_and_still_spells_unknown_ones(sd15_dir):
    from pocketdiff.loading import load_tokenizer_dir
    from pocketdiff.text.tokenizer import is_word_level, tokenize_prompts

    tok = load_tokenizer_dir(sd15_dir, "tokenizer")
    assert not is_word_level(tok) and tok.model_max_length == 77
    ids = tokenize_prompts(tok, ["a red circle", "zebra"])
    assert ids.shape == (2, 77)
    bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    assert ids[0, :5].tolist() == [bos, *tok.convert_tokens_to_ids(["a</w>", "red</w>", "circle</w>"]), eos]
    assert tok.decode(ids[1], skip_special_tokens=True).strip() == "zebra"  # byte-level: nothing is <unk>
    assert len([i for i in ids[1].tolist() if i not in (bos, eos)]) > 1  # spelled in pieces


def test_bpe_vocab_learns_merges_in_frequency_order():
    vocab, merges = bpe_vocab(["aa ab", "aa"], num_merges=2)
    assert merges[0] == "a a</w>"  # the pair in 'aa' twice beats 'ab' once
    assert "aa</w>" in vocab and len(set(vocab.values())) == len(vocab)


def test_the_pipeline_samples_from_it(sd15_dir):
    from pocketdiff.sampling.pipeline import load_pipeline

    pipe = load_pipeline(sd15_dir)
    out = pipe(["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=3.0, seed=0)
    assert out.images.shape == (2, 64, 64, 3)
    with torch.no_grad():
        assert pipe.encode(["a red circle"]).shape == (1, 77, 32)
