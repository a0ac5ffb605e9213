"""Captioned image files on disk: a folder of images with a JSONL or CSV manifest, or COCO
caption JSON. Not a part of the paper (its JFT-3B and ALIGN are private).

- `CaptionManifest`: a folder of images and a JSONL or CSV manifest with `image`, `caption`.
- `CocoCaptions`: COCO-style caption JSON (`images` + `annotations`), several captions per image
  (COCO, Flickr30k in Karpathy's conversion, and most people's own sets).

Files that are missing or unreadable, and rows without a usable caption, are skipped with one
warning that counts them, or raise in `strict` mode: a long run never dies on file 90,000 of
100,000. A file that breaks after the check is replaced by the next image while training, and
left out (never replaced) in evaluation.

Left out: reading from archives or object stores (webdataset, tar shards), decoding on the GPU.
"""

import csv
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import CaptionDataset, preprocess


class ImageFiles(CaptionDataset):
    """Captioned image files on disk. Files that cannot be read when the set is built are left
    out with one warning that counts them (`strict=True`: an error). A file that breaks later:

    - while training (`train=True`), the next readable image takes its place, so that batches
      keep their size (the all-gather of DDP needs equal shapes); the first is warned about.
    - in evaluation, nothing is substituted: the item is None, and the evaluation leaves the image
      (and its captions) out with a warning that counts them (`strict=True`: an error).
    """

    def __init__(self, paths, captions, tokenizer, image_size, context_length, train, strict, seed=0):
        quiet = len(paths) < 5000 or not sys.stderr.isatty()  # a bar only in a terminal, not in a log
        checking = tqdm(paths, desc="checking images", disable=quiet, leave=False)
        problems = [_unreadable(path) for path in checking]  # None where the file is fine
        bad = [f"{path} ({why})" for path, why in zip(paths, problems) if why]
        _skip_or_raise(bad, len(paths), "images that cannot be read", strict)
        keep = [i for i, why in enumerate(problems) if why is None]
        self.paths = [paths[i] for i in keep]
        super().__init__([captions[i] for i in keep], tokenizer, context_length, train, seed)
        self.image_size, self.strict, self.failed = image_size, strict, 0

    def load(self, i):
        """(3, S, S) preprocessed pixels of file i; an error that names the file."""
        try:
            with Image.open(self.paths[i]) as img:
                pixels = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        except Exception as error:
            raise OSError(f"could not decode {self.paths[i]} ({error})") from error
        return preprocess(pixels, self.image_size, self.train)

    def __getitem__(self, index):
        attempts = len(self) if self.train else 1  # evaluation: this image or none
        for attempt in range(attempts):
            i = (index + attempt) % len(self)
            try:
                return self.load(i), self.tokens(i)
            except OSError as error:
                if self.strict:
                    raise
                self.failed += 1
                if self.train and self.failed == 1:
                    warnings.warn(f"{error}; using the next image instead")
        return None  # evaluation: left out (evaluate.py counts it); training: no image readable


def _skip_or_raise(bad, total, what, strict):
    """One warning that counts the skipped `bad` entries ("name (why)") out of `total`, or in
    strict mode one error; nothing when there are none."""
    if not bad:
        return
    listed = "; ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    if strict:
        raise ValueError(f"{len(bad)} of {total} {what}: {listed}")
    warnings.warn(f"skipping {len(bad)} of {total} {what}: {listed}")


def _caption_problem(caption):
    """None if `caption` is usable text, else what is wrong with it."""
    if caption is None:
        return "no caption"
    if not isinstance(caption, str):
        return f"caption is a {type(caption).__name__}, not text"
    if not caption.strip():
        return "empty caption"
    return None


def _unreadable(path: Path):
    """None if `path` is an image file PIL can open, else a short reason."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as error:
        return type(error).__name__
    return None


def _folder(image_root) -> Path:
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return root


class CaptionManifest(ImageFiles):
    """A manifest (.jsonl or .csv, fields `image` and `caption`) of files under `image_root`.
    Rows naming the same image are gathered into one item with several captions. A row without
    an image or a usable caption (missing, null, empty) is skipped and counted by row number
    (`strict=True`: an error)."""

    def __init__(self, manifest, image_root, tokenizer, image_size, context_length=64,
                 train=False, strict=False, seed=0):  # fmt: skip
        manifest, root = Path(manifest), _folder(image_root)
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        if manifest.suffix == ".csv":
            with open(manifest, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_image, bad = {}, []
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or "image" not in row:
                got = sorted(row) if isinstance(row, dict) else type(row).__name__
                bad.append(f"row {n} (expected fields 'image' and 'caption'; got {got})")
            elif why := _caption_problem(row.get("caption")):
                bad.append(f"row {n} ({why})")
            else:
                by_image.setdefault(row["image"], []).append(row["caption"])
        if not by_image:
            raise ValueError(f"{manifest}: no row has an image and a caption; " + "; ".join(bad[:3]))
        _skip_or_raise(bad, len(rows), f"rows of {manifest} without an image and a caption", strict)
        paths = [root / name for name in by_image]
        super().__init__(paths, list(by_image.values()), tokenizer, image_size, context_length, train, strict, seed)


class CocoCaptions(ImageFiles):
    """COCO caption JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.
    An annotation without a usable caption, or whose image_id names no image, is skipped and
    counted (`strict=True`: an error); images without captions are left out."""

    def __init__(self, annotations, image_root, tokenizer, image_size, context_length=64,
                 train=False, strict=False, seed=0):  # fmt: skip
        annotations, root = Path(annotations), _folder(image_root)
        if not annotations.is_file():
            raise FileNotFoundError(f"caption file not found: {annotations}")
        data = json.loads(annotations.read_text(encoding="utf-8"))
        if "images" not in data or "annotations" not in data:
            raise ValueError(f"{annotations}: expected COCO caption JSON with 'images' and 'annotations'")
        by_id, bad = {image["id"]: [] for image in data["images"]}, []
        for n, note in enumerate(data["annotations"]):
            if note.get("image_id") not in by_id:
                bad.append(f"annotation {n} (image_id {note.get('image_id')!r} names no image)")
            elif why := _caption_problem(note.get("caption")):
                bad.append(f"annotation {n} ({why})")
            else:
                by_id[note["image_id"]].append(note["caption"])
        _skip_or_raise(bad, len(data["annotations"]), f"annotations of {annotations} without a usable caption", strict)
        images = [image for image in data["images"] if by_id[image["id"]]]  # captioned ones only
        paths = [root / image["file_name"] for image in images]
        captions = [by_id[image["id"]] for image in images]
        super().__init__(paths, captions, tokenizer, image_size, context_length, train, strict, seed)
