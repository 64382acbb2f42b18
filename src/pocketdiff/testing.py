"""Tiny stand-ins for the real path, built locally in seconds (nothing downloaded): what the tests and the docs'
commands run on.

    make_sd15_dir("tiny-sd15")            # SD-1.5 layout: CLIP BPE tokenizer, CLIPTextModel, AutoencoderKL,
                                          # UNet2DConditionModel, epsilon-prediction PNDM scheduler, model_index.json
    make_caption_folder("data", n=16)     # captioned PNGs (captions.jsonl), the shapes world's scenes
    make_clip_dir("tiny-clip")            # a transformers CLIPModel + tokenizer + image processor, for CLIP score
    make_inception_standin("incep.pt")    # a TorchScript network with the call signature of the FID Inception

Every network has random weights at a tiny width: the fixture checks that the code paths run and fit together
(layouts, shapes, tokenizers, configs), never quality. The layout is that of `runwayml/stable-diffusion-v1-5`:
four UNet levels (three with cross-attention), a four-level VAE (8x downsampling), a 77-token CLIP BPE tokenizer
given as vocab.json + merges.txt.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT = 77


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode table (GPT-2's): the 256 printable stand-ins for the bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def bpe_vocab(texts, num_merges: int = 200) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary learned from `texts` (lower-cased words, `</w>` marks a word's end): the 256 byte
    symbols, each with `</w>`, then `num_merges` merges of the most frequent pair (Sennrich et al. 2016), then the
    two special tokens. Returns (vocab, merges) as `CLIPTokenizer(vocab=..., merges=...)` takes them."""
    alphabet = _byte_alphabet()
    words = Counter(w for t in texts for w in t.lower().replace(",", " , ").replace(".", " . ").split())
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[str] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def write_clip_tokenizer(directory: str | Path, texts, num_merges: int = 200):
    """vocab.json + merges.txt + tokenizer_config.json, as SD-1.5's tokenizer/ (no tokenizer.json): a
    `CLIPTokenizer` with a 77-token context."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_vocab(texts, num_merges)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": CONTEXT, "bos_token": BOS, "eos_token": EOS,
        "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}, indent=1))
    return CLIPTokenizer.from_pretrained(str(directory))


def _scenes(n: int, seed: int, size: int | None = 64) -> tuple[np.ndarray | None, list[str]]:
    from pocketdiff.data.shapes import caption, render, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    captions = [caption(s, rng) for s in scenes]
    return (np.stack([render(s, size, rng) for s in scenes]) if size else None), captions


def vocabulary_texts() -> list[str]:
    """Texts the fixture tokenizers learn their merges from (shapes-world captions, so the test prompts tokenize
    into few pieces; any text still tokenizes, byte by byte)."""
    return _scenes(256, 1234, None)[1]


def text_encoder_config(vocab_size: int, hidden: int = 32, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=CONTEXT, projection_dim=projection_dim or hidden,
                          hidden_act="quick_gelu", bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                          pad_token_id=vocab_size - 1)


def make_sd15_dir(root: str | Path, seed: int = 0, image_size: int = 64, channels: tuple[int, ...] = (16, 32, 32, 32),
                  text_hidden: int = 32, full_size: bool = False, prediction_type: str = "epsilon") -> Path:
    """A tiny SD-1.5-layout pipeline directory with random weights (epsilon prediction, SD's schedule).
    `full_size`: SD-1.5's own sizes (860M-parameter UNet, 512 px VAE, 12-layer 768-wide text encoder), random
    weights, for benchmarks (benchmarks/gpu_real_path.sh), not tests."""
    import diffusers
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = write_clip_tokenizer(root / "tokenizer", vocabulary_texts())
    if full_size:
        image_size, channels, text_hidden = 512, (320, 640, 1280, 1280), 768
        text = text_encoder_config(len(tok), text_hidden)
        text.update(dict(intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
        unet = dict(layers_per_block=2, attention_head_dim=8, norm_num_groups=32)
    else:
        text = text_encoder_config(len(tok), text_hidden)
        vae = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
        unet = dict(layers_per_block=1, attention_head_dim=2, norm_num_groups=8)
    CLIPTextModel(text).save_pretrained(root / "text_encoder")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=image_size, scaling_factor=0.18215, **vae,
    ).save_pretrained(root / "vae")
    UNet2DConditionModel(
        sample_size=image_size // 8, in_channels=4, out_channels=4, block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=text_hidden, **unet,
    ).save_pretrained(root / "unet")
    PNDMScheduler(  # runwayml/stable-diffusion-v1-5's scheduler_config.json
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type=prediction_type,
    ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return root


def make_caption_folder(root: str | Path, n: int = 16, seed: int = 0, size: int = 64) -> Path:
    """`n` captioned PNGs (`captions.jsonl`), shapes-world scenes at `size` px."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images, captions = _scenes(n, seed, size)
    rows = []
    for i, (im, cap) in enumerate(zip(images, captions)):
        name = f"{i:05d}.png"
        Image.fromarray(im).save(root / name)
        rows.append(json.dumps({"file": name, "caption": cap}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root


def make_clip_dir(root: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny transformers `CLIPModel` directory (model, BPE tokenizer, image processor) for CLIP score."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    root = Path(root)
    torch.manual_seed(seed)
    tok = write_clip_tokenizer(root, vocabulary_texts())
    text = text_encoder_config(len(tok), 32, 16).to_dict()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8, projection_dim=16).to_dict()
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(root)
    return root


class _InceptionStandin(torch.nn.Module):
    """The call signature of the TorchScript FID Inception (`inception-2015-12-05.pt`: float images 0-255,
    [N, 3, H, W] -> [N, 2048] pool features with `return_features=True`), at 64 features, random weights."""

    def __init__(self, features: int = 64):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, features, 5, stride=4)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.relu(self.conv(x / 128.0 - 1.0)).mean(dim=(2, 3))


def make_inception_standin(path: str | Path, seed: int = 0) -> Path:
    """A tiny random TorchScript stand-in for the FID Inception (see `_InceptionStandin`): tests only."""
    import warnings

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # torch.jit is deprecated; the FID Inception it stands in for is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_InceptionStandin()).save(str(path))
    return Path(path)


def force_fsdp_on_cpu():
    """Make the trainer's Accelerator an FSDP2 one on the CPU, with the FSDP settings of the shipped
    pocketdiff/configs/accelerate/fsdp-8gpu.yaml, as a GPU launch with that file makes it: Accelerate
    1.15 sets FSDP up only on accelerator devices (accelerate/state.py: `AcceleratorState.__init__` turns a launch into
    FSDP only from the MULTI_GPU-like types, a CPU launch is MULTI_CPU), while torch's FSDP2 (`fully_shard`) and
    Accelerate's FSDP2 preparation and state-dict calls run on gloo. Returns the undo."""
    from importlib.resources import files

    import yaml
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from pocketdiff.training import loop

    shipped = yaml.safe_load((files("pocketdiff") / "configs/accelerate/fsdp-8gpu.yaml").read_text())
    assert shipped["distributed_type"] == "FSDP"
    conf = shipped["fsdp_config"]  # the shipped launch config's FSDP settings, as `accelerate launch` passes them
    made = loop._make_accelerator

    def fsdp_accelerator(*args, **kwargs):
        accelerator = made(*args, **kwargs)
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=conf["fsdp_version"], auto_wrap_policy=conf["fsdp_auto_wrap_policy"].lower(),
            reshard_after_forward=conf["fsdp_reshard_after_forward"], state_dict_type=conf["fsdp_state_dict_type"],
            cpu_offload=conf["fsdp_offload_params"], cpu_ram_efficient_loading=conf["fsdp_cpu_ram_efficient_loading"],
            activation_checkpointing=conf["fsdp_activation_checkpointing"])
        for state in (AcceleratorState, PartialState):
            state._shared_state["distributed_type"] = DistributedType.FSDP
        return accelerator

    loop._make_accelerator = fsdp_accelerator
    return lambda: setattr(loop, "_make_accelerator", made)


def free_port() -> int:
    """A free TCP port on this machine, for an `accelerate launch --main_process_port` in a test (not torchrun's
    default 29500: another run on the machine may hold it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toy_regression_stream(seed: int, dim: int, bad_every: int = 0):
    """The trainer tests' toy task: x ~ N(0, I_dim), y = sum(x), one example per global sample index. `bad_every` k:
    read through a 64-item source whose every k-th item is bad (None, as a corrupt image is), so that examples carry
    "skipped" counts (`pocketdiff.data.stream`)."""
    from pocketdiff.data.stream import seeded_stream

    def make(item, rng):
        x = torch.from_numpy(rng.standard_normal(dim)).float()
        return {"x": x, "y": x.sum(0, keepdim=True), **({"skipped": item.get("skipped", 0)} if item else {})}

    if not bad_every:
        return seeded_stream(seed, make)
    return seeded_stream(seed, make, [None if j % bad_every == 0 else {"ok": True} for j in range(64)])


__all__ = ["bpe_vocab", "force_fsdp_on_cpu", "free_port", "make_caption_folder", "make_clip_dir",
           "make_inception_standin", "make_sd15_dir", "toy_regression_stream", "write_clip_tokenizer"]
