"""Smaller components by structured pruning: the VAE decoder (SnapFusion's efficient decoder) and a tiny baseline.

    pocketdiff prune decoder --vae sd --ratio 0.5 --out models/sd-vae-pruned
    pocketdiff train decoder --set options.student_dir=models/sd-vae-pruned     # distil it from the original

`decoder`: Torch-Pruning on a diffusers AutoencoderKL decoder, saved as `SlimAutoencoderKL` (encoder untouched).
`tiny_decoder`: a TAESD-style conv + ReLU decoder with the same latent interface. Torch-Pruning is imported lazily
(the `prune` extra), so loading a pruned model needs only diffusers.
"""

from pocketdiff.pruning.decoder import (SD15_VAE_CONFIG, PruningError, SlimAutoencoderKL, decoder_param_count,
                                        decoder_widths, load_vae_dir, prune_decoder, resolve_vae, vae_class)
from pocketdiff.pruning.tiny_decoder import TinyDecoder

__all__ = ["SD15_VAE_CONFIG", "PruningError", "SlimAutoencoderKL", "TinyDecoder", "decoder_param_count",
           "decoder_widths", "load_vae_dir", "prune_decoder", "resolve_vae", "vae_class"]
