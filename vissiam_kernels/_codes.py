"""The integer codes of the ops, read from their one definition in csrc/include/vissiam/op_codes.h.

``FAMILY_CODES``, ``QUANTITY_CODES``, ``REDUCTION_CODES`` map the Python API's strings to the ops'
``family`` / ``quantity`` / ``reduction`` arguments; ``ROW_STATE`` names the columns of the (rows, 4)
float64 row-state tables. The header is parsed once at import, so the C++, CUDA, Triton and Python
sides share one table; ``loss_dtype`` is the output-dtype rule the header states.
"""

from __future__ import annotations

import re

import torch

from ._extension import source_dir

_ENUMERATOR = re.compile(r"^\s*k(\w+)\s*=\s*(\d+)\s*,", re.MULTILINE)
_ENUM = re.compile(r"enum\s+(\w+)\s*:\s*int\s*\{(.*?)\};", re.DOTALL)


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _read_enums() -> dict[str, dict[str, int]]:
    text = (source_dir() / "include" / "vissiam" / "op_codes.h").read_text(encoding="utf-8")
    return {name: {_snake(k): int(v) for k, v in _ENUMERATOR.findall(body)} for name, body in _ENUM.findall(text)}


_ENUMS = _read_enums()

FAMILY_CODES = {
    "none": _ENUMS["Family"]["cosine"],
    "vmf": _ENUMS["Family"]["von_mises_fisher"],
    "power_spherical": _ENUMS["Family"]["power_spherical"],
}
QUANTITY_CODES = {
    "log_normalizer": _ENUMS["Quantity"]["log_normalizer"],
    "dlog_normalizer": _ENUMS["Quantity"]["log_normalizer_derivative"],
    "d2log_normalizer": _ENUMS["Quantity"]["log_normalizer_second_derivative"],
    "entropy": _ENUMS["Quantity"]["entropy"],
    "kl_uniform": _ENUMS["Quantity"]["kl_uniform"],
}
REDUCTION_CODES = {name: _ENUMS["Reduction"][f"reduction_{name}"] for name in ("none", "mean", "sum")}
ROW_STATE = {
    "mu_coef": _ENUMS["RowStateColumn"]["mu_coef_column"],
    "target_coef": _ENUMS["RowStateColumn"]["target_coef_column"],
    "cross_coef": _ENUMS["RowStateColumn"]["cross_coef_column"],
    "kappa_grad": _ENUMS["RowStateColumn"]["kappa_grad_column"],
}
ROW_STATE_COLUMNS = _ENUMS["RowStateColumn"]["row_state_columns"]


def loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (op_codes.h states the rule for every backend)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
