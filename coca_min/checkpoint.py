"""Saving and loading a trained CoCa with its config and tokenizer.

Not part of the paper. A checkpoint is one `torch.save` file holding plain data: the model's
`state_dict`, its `CoCaConfig` as a dict, the tokenizer's merges, and whatever else the caller
adds (optimizer state, step, …). It is written to a temporary file and then renamed, so a crash
while saving never leaves a half-written checkpoint, and it loads with `weights_only=True`.
Keys are saved without the `_orig_mod.` (torch.compile) or `module.` (DDP) prefixes.
"""

import os
from dataclasses import asdict
from pathlib import Path

import torch

from .config import CoCaConfig
from .model import CoCa
from .tokenizer import Tokenizer


def unwrap(model):
    """The plain CoCa inside a torch.compile and/or DistributedDataParallel wrapper."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, model, tokenizer=None, **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    checkpoint = {"model": model.state_dict(), "config": asdict(model.config),
                  "tokenizer": tokenizer.state() if tokenizer else None, **extra}  # fmt: skip
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)  # atomic: the old file stays whole until the new one is


def read_checkpoint(path, device="cpu") -> dict:
    """The saved dict as it is (state dicts, config as a dict, …)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device, weights_only=True)


def load_checkpoint(path, device="cpu") -> dict:
    """The saved dict, with "model" a ready CoCa (eval mode) and "tokenizer" a Tokenizer."""
    checkpoint = read_checkpoint(path, device)
    model = CoCa(CoCaConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["model"])
    checkpoint["model"] = model.eval()
    if checkpoint.get("tokenizer") is not None:
        checkpoint["tokenizer"] = Tokenizer.from_state(checkpoint["tokenizer"], source=str(path))
    return checkpoint
