"""reprodiff: consistent model reproducibility in diffusion models (Zhang et al. 2023, arXiv 2310.05264)."""

from . import data, kernels, metrics, optimal, sampling, similarity
from .denoiser import Denoiser, MicroBatched
from .kernels import EDM, EDMX0, VE, VP, SubVP, make_kernel
from .optimal import EmpiricalOptimalDenoiser, GaussianDenoiser
from .precond import Precond

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "EDMX0",
    "VE",
    "VP",
    "Denoiser",
    "EmpiricalOptimalDenoiser",
    "GaussianDenoiser",
    "MicroBatched",
    "Precond",
    "SubVP",
    "__version__",
    "data",
    "kernels",
    "make_kernel",
    "metrics",
    "optimal",
    "sampling",
    "similarity",
]
