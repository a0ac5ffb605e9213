"""Command-line arguments for train.py and sample.py: checked ranges, one-line errors.

Not a part of the paper. Everything here is plain argparse and needs no torch, so that a wrong
argument or a missing file is reported in milliseconds, before torch, the data or a model load.

- `Parser`: an ArgumentParser whose errors are one line (`train.py: error: argument --lr: …`)
  instead of the whole usage text, exit status 2.
- `ranged(int, minimum=1)`: an argparse `type=` that refuses values out of range, NaN and inf;
  `text`: non-empty UTF-8 text; `device_name`: auto, cpu, cuda, cuda:N.
- `HelpWithDefaults`: --help shows each default once.
- `given_options`: which options were given, so that a resumed run keeps its own settings.
"""

import argparse
import math
import os
from pathlib import Path


class Parser(argparse.ArgumentParser):
    def error(self, message):
        quiet = int(os.environ.get("LOCAL_RANK", 0)) > 0  # under torchrun: one line per machine, not per process
        self.exit(2, None if quiet else f"{self.prog}: error: {message} (see --help)\n")


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default once: argparse's, unless the help text states its own."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default:" in (action.help or ""):  # False: a switch
            return action.help
        return super()._get_help_string(action)


# train.py's settings that a resumed run takes from OUT/args.json unless they are given again
RUN_SETTINGS = ["size", "data", "images", "val_data", "tokenizer", "strict", "vocab_size", "recombine", "batch_size", "accum", "lr",
                "image_lr_scale", "min_lr_ratio", "weight_decay", "grad_clip", "caption_weight", "contrastive_weight",
                "seed", "dtype", "fsdp", "activation_checkpointing", "checkpoint"]  # fmt: skip


def given_options(parser, argv):
    """The names (dests) of the options given in `argv`, not left at their defaults: `parser`
    parses `argv` again with every default suppressed. Call it after the real parse."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def ranged(kind, minimum=None, maximum=None, above=None):
    """An argparse `type=`: `kind` (int or float) with `minimum <= value <= maximum` and
    `value > above` (each bound optional); NaN and infinity are refused."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be more than {above}, got {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def text(value):
    """An argparse `type=` for text that a tokenizer reads: non-empty, and valid UTF-8 (a
    command line in another encoding gives Python undecodable bytes, as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{value!r} has bytes that are not UTF-8") from None
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty")
    return value


def device_name(text):
    """An argparse `type=` for --device: auto, cpu, cuda or cuda:N."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def file_problem(path, suffixes=None):
    """None if `path` is a readable file (with one of `suffixes`), else what is wrong."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if not path.is_file():
        return f"no such file: {path}"
    if suffixes and path.suffix.lower() not in suffixes:
        return f"expected a {' or '.join(suffixes)} file, got {path}"
    if not os.access(path, os.R_OK):
        return f"cannot read {path} (permission denied)"
    return None


def folder_problem(path):
    """None if `path` is a readable folder, else what is wrong."""
    path = Path(path)
    if not path.exists():
        return f"no such folder: {path}"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"cannot read {path} (permission denied)"
    return None


def output_problem(path):
    """None if `path` is a folder that exists or can be made and written to, else what is wrong."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    existing = next(p for p in [path, *path.parents] if p.exists())  # the nearest that exists
    if not existing.is_dir():
        return f"cannot make {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write to {existing} (permission denied)"
    return None
