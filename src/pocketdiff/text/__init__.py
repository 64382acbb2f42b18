"""Text side of the pipeline: the word-level tokenizer and the tiny CLIP text encoder the UNet conditions on."""

from pocketdiff.text.clip import CLIPImageTower, build_text_encoder, encode_prompts, load_clip
from pocketdiff.text.tokenizer import CONTEXT_LENGTH, build_tokenizer, load_tokenizer, tokenize_prompts

__all__ = [
    "CONTEXT_LENGTH",
    "CLIPImageTower",
    "build_text_encoder",
    "build_tokenizer",
    "encode_prompts",
    "load_clip",
    "load_tokenizer",
    "tokenize_prompts",
]
