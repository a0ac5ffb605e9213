"""coca_min: a minimal, paper-faithful PyTorch implementation of CoCa (Yu et al., 2022).

    from coca_min import CoCa, CoCaConfig, PRESETS, load_model
    model = CoCa(PRESETS["tiny"])                    # or load_model("out/tiny/ckpt.pt")

The paper is `coca_min/model/`; the rest is plumbing around it: `data/` (tokenizer, data sets,
shards), `train/` (what train.py runs), `eval/` (evaluations and their commands), `coursework/`,
and at this level the config, checkpoints and command-line helpers.

`CoCa`, `count_parameters` and `load_model` are loaded on first use, with torch: the configs
(and so `train.py --help` or a wrong argument) need no torch and answer in milliseconds.
"""

from .config import PRESETS, CoCaConfig

__all__ = ["CoCa", "CoCaConfig", "PRESETS", "count_parameters", "load_model"]


def __getattr__(name):  # PEP 562: `from coca_min import CoCa` imports the model (and torch) here
    if name in ("CoCa", "count_parameters"):
        from . import model

        return getattr(model, name)
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'coca_min' has no attribute {name!r}")
