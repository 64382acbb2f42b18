"""pocketdiff: efficient mobile text-to-image diffusion (SnapFusion, MobileDiffusion), measured end to end."""

import logging

# torchao (a dependency of executorch, the `export` extra) is imported by transformers and diffusers whenever it is
# installed, and then warns on every run: its CUDA kernels cannot load into the CPU build of torch, its enums are
# registered with torch's pytree, it lacks a few old tensor types diffusers looks for. pocketdiff uses none of that,
# so these warnings are silenced (errors still show)
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"
