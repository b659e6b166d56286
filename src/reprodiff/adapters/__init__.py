"""Outside models as denoisers: diffusers UNets (``diffusers.py``) and local Stable-Diffusion pipelines
(``text2image.py``). The names of ``diffusers.py`` are re-exported here (``reprodiff.adapters`` was that module
before it became this package)."""

from .diffusers import (
    PREDICTION_TYPES,
    DiffusersDenoiser,
    DiscreteVP,
    MissingDependencyError,
    alphas_cumprod_of,
    image_shape_of,
    load_unet_denoiser,
    require,
    scheduler_sigmas,
)

__all__ = ["PREDICTION_TYPES", "DiffusersDenoiser", "DiscreteVP", "MissingDependencyError", "alphas_cumprod_of",
           "image_shape_of", "load_unet_denoiser", "require", "scheduler_sigmas"]
