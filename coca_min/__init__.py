"""coca_min: a minimal, paper-faithful PyTorch implementation of CoCa (Yu et al., 2022).

    from coca_min import CoCa, CoCaConfig, PRESETS
    model = CoCa(PRESETS["tiny"])

`CoCa` and `count_parameters` are loaded on first use, with torch: the configs (and so
`train.py --help` or a wrong argument) need no torch and answer in milliseconds.
"""

from .config import PRESETS, CoCaConfig

__all__ = ["CoCa", "CoCaConfig", "PRESETS", "count_parameters"]


def __getattr__(name):  # PEP 562: `from coca_min import CoCa` imports model.py (and torch) here
    if name in ("CoCa", "count_parameters"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'coca_min' has no attribute {name!r}")
