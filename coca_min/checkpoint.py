"""Saving and loading a trained CoCa with its config and tokenizer.

Not part of the paper. A checkpoint is one `torch.save` file holding plain data: the model's
`state_dict`, its `CoCaConfig` as a dict, the tokenizer's merges, and whatever else the caller
adds (optimizer state, step, …). It is written to a temporary file and then renamed, so a crash
while saving never leaves a half-written checkpoint, and it loads with `weights_only=True`.
Keys are saved without the `_orig_mod.` (torch.compile) or `module.` (DDP) prefixes.

`load_model(path)` gives the trained model alone. (It lives here, not as a method of `CoCa`:
the model, `coca_min/model/`, imports nothing of the rest of coca_min, and a checkpoint holds a
tokenizer, `coca_min/data/tokenizer.py`, too.)

A file that is not such a checkpoint (another format, a bare state_dict, a pickle holding
objects that `weights_only=True` refuses to run) gives a ValueError naming the file and why.
"""

import os
import pickle
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import torch

from coca_min.config import CoCaConfig
from coca_min.data.tokenizer import Tokenizer
from coca_min.model.coca import CoCa
from coca_min.words import with_article


def unwrap(model):
    """The plain CoCa inside a torch.compile and/or DistributedDataParallel wrapper."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, model, tokenizer=None, weights=None, **extra) -> None:
    """weights: the model's state dict when `model.state_dict()` is not it whole (a sharded
    model's, gathered: sharding.gathered_weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    weights = model.state_dict() if weights is None else weights
    checkpoint = {"model": weights, "config": asdict(model.config),
                  "tokenizer": tokenizer.state() if tokenizer else None, **extra}  # fmt: skip
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)  # atomic: the old file stays whole until the new one is


def read_checkpoint(path) -> dict:
    """The saved dict as it is (state dicts, config as a dict, …), its tensors on the CPU and
    memory-mapped from the file: nothing is read until it is used, and nothing lands on a GPU
    unless a caller copies it there (a resumed rank of a sharded run takes only its shards).
    A clear error for a file that is not a coca_min checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise ValueError(f"{path} is not a coca_min checkpoint (not a file that torch.save wrote)")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise ValueError(f"{path} holds Python objects besides tensors and plain data, which are not "
                             "loaded, for safety (torch.load with weights_only=True); it was not written by "
                             "coca_min's save_checkpoint") from None  # fmt: skip
        raise ValueError(f"{path} is not a coca_min checkpoint (torch.load cannot read it: {_first_line(error)})") from None
    except (OSError, MemoryError, torch.cuda.OutOfMemoryError):
        raise  # the file could not be read, or did not fit: not a question of its format
    except Exception:  # another format: torch.load's unpickler fails in many ways, few of them readable
        raise ValueError(f"{path} is not a coca_min checkpoint (not a file that torch.save wrote)") from None
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} is a bare state_dict ({len(checkpoint)} tensors), not a coca_min checkpoint: it has no "
                         "config or tokenizer; coca_min.checkpoint.save_checkpoint writes them with the weights")  # fmt: skip
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) or "config" not in checkpoint:
        has = f"keys {sorted(map(str, checkpoint))[:3]}" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise ValueError(f"{path} is not a coca_min checkpoint: expected a dict with 'model' and 'config' (as "
                         f"save_checkpoint writes), found {has}")  # fmt: skip
    config_of(checkpoint, path)  # a config this version can build
    return checkpoint


def config_of(checkpoint, path="the checkpoint") -> CoCaConfig:
    """The checkpoint's CoCaConfig; a ValueError if its fields are not this version's."""
    config, known = checkpoint["config"], {f.name for f in fields(CoCaConfig)}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its 'config' is a {type(config).__name__}, not a dict of CoCaConfig fields")
    unknown = sorted(map(str, set(config) - known))
    if unknown:
        raise ValueError(f"{path}: its config has fields this coca_min does not know: {', '.join(unknown)}")
    defaults = CoCaConfig()
    for name, value in config.items():  # each as the default's type (an int where a float is expected too)
        expected = type(getattr(defaults, name))
        if getattr(defaults, name) is not None and not isinstance(value, expected) and not (expected is float and type(value) is int):
            raise ValueError(f"{path}: its config's {name} is {value!r}, not {with_article(expected.__name__)}")
    return CoCaConfig(**config)


def load_checkpoint(path, device="cpu") -> dict:
    """The saved dict, with "model" a ready CoCa on `device` (eval mode) and "tokenizer" a Tokenizer."""
    checkpoint = read_checkpoint(path)
    model = CoCa(config_of(checkpoint, path)).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # missing, unexpected or mis-shaped weights
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise ValueError(f"{path}: its weights do not fit its config ({details[0][:200] if details else error})") from None
    checkpoint["model"] = model.eval()
    if checkpoint.get("tokenizer") is not None:
        checkpoint["tokenizer"] = Tokenizer.from_state(checkpoint["tokenizer"], source=str(path))
    return checkpoint


def load_model(path, device="cpu") -> CoCa:
    """The trained CoCa of a checkpoint, in eval mode: `load_checkpoint(path)["model"]`."""
    return load_checkpoint(path, device)["model"]


def _first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
