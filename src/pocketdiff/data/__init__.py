"""Training data: the procedural shapes world and user folders of captioned images."""

from pocketdiff.data.folder import ImageCaptionFolder
from pocketdiff.data.shapes import (
    VOCABULARY,
    Scene,
    ShapeObject,
    ShapesDataset,
    caption,
    heldout_prompts,
    is_heldout,
    make_batch,
    render,
    sample_scene,
)

__all__ = [
    "VOCABULARY",
    "ImageCaptionFolder",
    "Scene",
    "ShapeObject",
    "ShapesDataset",
    "caption",
    "heldout_prompts",
    "is_heldout",
    "make_batch",
    "render",
    "sample_scene",
]
