"""pocketdiff: efficient mobile text-to-image diffusion (SnapFusion, MobileDiffusion), measured end to end."""

__version__ = "0.1.0"
