"""Stage `clip`: contrastive (InfoNCE, learnable temperature) training of the tiny CLIP on (image, caption) pairs.

Exports `text_encoder/` (CLIPTextModel, what the UNet conditions on; frozen from here on) to `export_dir` and the
image tower + projection heads to `clip_image/` beside it (for `pocketdiff.evaluation.clip_score`).

`evaluate_clip` reports
- `eval_i2t_top1` / `eval_t2i_top1`: retrieval among 64 held-out scenes (distinct attribute tuples, fully specified
  captions from `heldout_prompts`), `eval_i2t_top1_train` the same for 64 training-distribution scenes;
- `eval_attr_acc` (+ per attribute): the image scores its caption above the same caption with ONE attribute changed
  (colour, shape, size, position or relation), over 320 training-distribution scenes;
- `eval_attr_cos`: mean cosine between the pooled text embeddings of those caption pairs (1.0 = indistinguishable),
  `eval_attr_state_cos` the same on the flattened token states the UNet sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pocketdiff.data.batches import image_stream, open_dataset
from pocketdiff.resources import default_model_path
from pocketdiff.text.clip import CLIPImageTower, build_text_encoder, contrastive_loss
from pocketdiff.text.tokenizer import load_tokenizer, tokenize_prompts
from pocketdiff.training.loop import Stage

EVAL_SEED = 30_000


def full_caption(scene) -> str:
    """A fully specified caption (size always named), first phrase of each kind: deterministic."""
    from pocketdiff.data.shapes import POSITION_PHRASES, RELATION_PHRASES

    def obj(o):
        words = f"{o.size} {o.color} {o.shape}"
        return ("an " if words[0] in "aeiou" else "a ") + words

    if len(scene.objects) == 1:
        return f"{obj(scene.objects[0])} {POSITION_PHRASES[scene.objects[0].position][0]}"
    a, b = scene.objects
    return f"{obj(a)} {RELATION_PHRASES[scene.relation][0]} {obj(b)}"


def change_one_attribute(scene, rng: np.random.Generator):
    """(attribute name, scene with exactly one attribute of objects[0] or the layout changed)."""
    from pocketdiff.data.shapes import COLORS, INVERSE_RELATION, POSITIONS, SHAPES, SIZES

    o = scene.objects[0]
    kinds = ["color", "shape", "size", "position" if len(scene.objects) == 1 else "relation"]
    kind = kinds[rng.integers(len(kinds))]
    if kind == "relation":
        return kind, replace(scene, relation=INVERSE_RELATION[scene.relation])
    taken = {x.color for x in scene.objects}
    choices = {"color": [c for c in COLORS if c not in taken], "shape": [s for s in SHAPES if s != o.shape],
               "size": [s for s in SIZES if s != o.size], "position": [p for p in POSITIONS if p != o.position]}[kind]
    new = replace(o, **{kind: choices[rng.integers(len(choices))]})
    return kind, replace(scene, objects=(new, *scene.objects[1:]))


@torch.no_grad()
def evaluate_clip(tokenizer, text_encoder, image_tower: CLIPImageTower, n: int = 64, n_attr: int = 320,
                  seed: int = EVAL_SEED) -> dict[str, float]:
    from pocketdiff.data.shapes import canonical_key, heldout_prompts, render, sample_scene, to_tensor

    rng = np.random.default_rng(seed)
    device = image_tower.device  # the training device (a GPU under accelerate); the judging happens on the CPU

    def text_states(captions):
        return text_encoder(input_ids=tokenize_prompts(tokenizer, captions, warn=False).to(device)).last_hidden_state

    def images(scenes):
        return to_tensor(np.stack([render(s, 64, rng) for s in scenes])).to(device)

    def retrieval(scenes, captions):
        img = image_tower.encode_image(images(scenes))
        txt = image_tower.encode_text(text_states(captions))
        sim = (img @ txt.t()).cpu()
        target = torch.arange(len(scenes))
        return (sim.argmax(1) == target).float().mean().item(), (sim.argmax(0) == target).float().mean().item()

    def distinct(pairs, k):
        seen, out = set(), []
        for prompt, scene in pairs:
            if canonical_key(scene) not in seen and len(out) < k:
                seen.add(canonical_key(scene))
                out.append((prompt, scene))
        return out

    held = distinct(heldout_prompts("heldout-single"), n // 2) + distinct(heldout_prompts("heldout-two"), n - n // 2)
    i2t, t2i = retrieval([s for _, s in held], [p for p, _ in held])
    train = distinct(((None, sample_scene(rng)) for _ in range(50 * n)), n)
    i2t_train, _ = retrieval([s for _, s in train], [full_caption(s) for _, s in train])

    scenes = [sample_scene(rng) for _ in range(n_attr)]
    changed = [change_one_attribute(s, rng) for s in scenes]
    img = image_tower.encode_image(images(scenes))
    h_true, h_other = text_states([full_caption(s) for s in scenes]), text_states([full_caption(c) for _, c in changed])
    t_true, t_other = image_tower.encode_text(h_true), image_tower.encode_text(h_other)
    correct = ((img * t_true).sum(1) > (img * t_other).sum(1)).float().cpu()
    out = {"eval_i2t_top1": i2t, "eval_t2i_top1": t2i, "eval_i2t_top1_train": i2t_train,
           "eval_attr_acc": correct.mean().item(),
           "eval_attr_cos": (t_true * t_other).sum(1).mean().item(),
           "eval_attr_state_cos": F.cosine_similarity(h_true.flatten(1), h_other.flatten(1)).mean().item()}
    kinds = np.array([k for k, _ in changed])
    for kind in ("color", "shape", "size", "position", "relation"):
        if (kinds == kind).any():
            out[f"eval_attr_acc_{kind}"] = correct[torch.from_numpy(kinds == kind)].mean().item()
    return out


class CLIPStage(Stage):
    """Train the tiny CLIP contrastively; export text_encoder/ and clip_image/."""

    name = "clip"

    @dataclass
    class Options:
        tokenizer_dir: str = field(default_factory=lambda: default_model_path("tokenizer"))
        image_export_dir: str | None = None  # default: clip_image/ beside export_dir
        data: str = "shapes"  # or a folder for ImageCaptionFolder
        two_object_fraction: float = 0.5
        # text encoder (CLIPTextModel)
        hidden_size: int = 128
        num_layers: int = 3
        num_heads: int = 4
        intermediate_size: int = 512
        # image tower
        image_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
        image_hidden: int = 256
        embed_dim: int = 128
        eval_candidates: int = 64

    def build(self):
        o = self.opts
        self.tokenizer = load_tokenizer(o.tokenizer_dir)
        self.dataset_source = open_dataset(o.data)
        text = build_text_encoder(self.tokenizer, hidden_size=o.hidden_size, num_layers=o.num_layers,
                                  num_heads=o.num_heads, intermediate_size=o.intermediate_size)
        image = CLIPImageTower(image_size=64, block_out_channels=tuple(o.image_channels), hidden_dim=o.image_hidden,
                               text_hidden_size=o.hidden_size, embed_dim=o.embed_dim)
        return {"text_encoder": text, "clip_image": image}

    def dataset(self):
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction)

    def collate(self, examples):
        batch = super().collate(examples)
        return {"pixel_values": batch["pixel_values"],
                "input_ids": tokenize_prompts(self.tokenizer, batch["caption"], warn=False)}

    def compute_loss(self, models, frozen, batch):
        states = models["text_encoder"](input_ids=batch["input_ids"]).last_hidden_state
        img, txt, logit_scale = models["clip_image"](batch["pixel_values"], states)
        img, txt = img.float(), txt.float()
        loss = contrastive_loss(img, txt, logit_scale)
        acc = ((img @ txt.t()).argmax(1) == torch.arange(len(img), device=img.device)).float().mean()
        return loss, {"batch_acc": acc.item(), "temperature": 1.0 / logit_scale.exp().item()}

    def evaluate(self, models, frozen):
        return evaluate_clip(self.tokenizer, models["text_encoder"], models["clip_image"], n=self.opts.eval_candidates)

    def export(self, models, frozen, export_dir: Path) -> None:
        from pocketdiff.io import atomic_dir

        image_dir = Path(self.opts.image_export_dir or export_dir.parent / "clip_image")
        for module, target in ((models["text_encoder"], export_dir), (models["clip_image"], image_dir)):
            with atomic_dir(target) as tmp:
                module.save_pretrained(str(tmp))
