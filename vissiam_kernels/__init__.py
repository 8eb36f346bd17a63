"""vissiam_kernels: exact, fused likelihoods on the unit hypersphere for VI-SimSiam.

Public API (shapes in each docstring); backends and numerics in the README.
"""

from ._dispatch import BackendUnavailableError, last_backend
from .functional import (
    power_spherical_entropy,
    power_spherical_kl_uniform,
    power_spherical_log_normalizer,
    power_spherical_loss,
    power_spherical_nll,
    vi_simsiam_loss,
    vmf_entropy,
    vmf_kl_uniform,
    vmf_log_normalizer,
    vmf_loss,
    vmf_nll,
)
from .modules import VISimSiamLoss, VMFLoss

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "VISimSiamLoss",
    "VMFLoss",
    "last_backend",
    "power_spherical_entropy",
    "power_spherical_kl_uniform",
    "power_spherical_log_normalizer",
    "power_spherical_loss",
    "power_spherical_nll",
    "vi_simsiam_loss",
    "vmf_entropy",
    "vmf_kl_uniform",
    "vmf_log_normalizer",
    "vmf_loss",
    "vmf_nll",
]
