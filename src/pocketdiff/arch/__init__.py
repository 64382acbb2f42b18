"""UNet architectures: ArchSpec (a UNet as data), FlexUNet (one model class for every spec), the preset registry."""

from diffusers import ModelMixin  # noqa: F401 - diffusers' pipeline loader finds a component's base class here

from .convert import InitReport, flexunet_from_diffusers, init_from_teacher, spec_from_diffusers_config
from .presets import create, get_spec, list_presets
from .spec import ArchSpec, ResSpec, TfSpec, block_signature
from .unet import FlexUNet

__all__ = [
    "ArchSpec", "ResSpec", "TfSpec", "FlexUNet", "InitReport", "create", "get_spec", "list_presets",
    "flexunet_from_diffusers", "init_from_teacher", "spec_from_diffusers_config", "block_signature",
]
