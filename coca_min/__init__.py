"""coca_min: a minimal, paper-faithful PyTorch implementation of CoCa (Yu et al., 2022).

    from coca_min import CoCa, CoCaConfig, PRESETS
    model = CoCa(PRESETS["tiny"])
"""

from .config import PRESETS, CoCaConfig
from .model import CoCa, count_parameters

__all__ = ["CoCa", "CoCaConfig", "PRESETS", "count_parameters"]
