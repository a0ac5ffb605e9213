"""Image-caption data sets, image preprocessing in plain torch, and batching.

Not a part of the paper (its JFT-3B and ALIGN are private); this is how coca_min feeds pairs to
CoCa:

- `TinyShapes`: the shipped `tiny_data/` set by split name, decoded images kept in memory.
- `CaptionManifest`: a folder of images and a JSONL or CSV manifest with `image`, `caption`.
- `CocoCaptions`: COCO-style caption JSON (`images` + `annotations`), several captions per image
  (COCO, Flickr30k in Karpathy's conversion, and most people's own sets).

Training draws one caption per image per epoch (call `set_epoch`); evaluation reads them all
(`.captions`). Files that are missing or unreadable, and rows without a usable caption, are
skipped with one warning that counts them, or raise in `strict` mode: a long run never dies on
file 90,000 of 100,000. A file that breaks after the check is replaced by the next image while
training, and left out (never replaced) in evaluation.

Left out: torchvision (everything here is a few lines of torch), colour jitter and flips (a
flip would turn "left" into "right" in the captions).
"""

import csv
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from . import shapes
from .tokenizer import PAD, Tokenizer

TINY_DATA = Path(__file__).resolve().parents[1] / "tiny_data"
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)  # CLIP's RGB statistics
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


def preprocess(image: torch.Tensor, size: int, train: bool = False) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) normalised float: a square crop, resized.

    Evaluation takes the centre square of the shorter side; training a random square of 85-100%
    of the shorter side at a random place (light random-crop augmentation).
    """
    _, H, W = image.shape
    side = min(H, W)
    if train:
        side = int(side * (0.85 + 0.15 * torch.rand(()).item()))
        top, left = (torch.randint(n - side + 1, ()).item() for n in (H, W))
    else:
        top, left = (H - side) // 2, (W - side) // 2
    crop = image[:, top : top + side, left : left + side].float()[None] / 255  # (1, 3, s, s)
    if side != size:
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (crop[0].clamp(0, 1) - MEAN) / STD


def collate(batch, pad_id: int = PAD):
    """[(image (3, S, S), tokens (T_i,)), …] -> images (B, 3, S, S), tokens (B, max T_i) padded.
    Items that failed to load (None) are dropped."""
    batch = [item for item in batch if item is not None]
    if not batch:
        raise ValueError("every image of this batch failed to load")
    images = torch.stack([image for image, _ in batch])
    tokens = torch.nn.utils.rnn.pad_sequence([t for _, t in batch], batch_first=True, padding_value=pad_id)
    return images, tokens


class CaptionDataset(torch.utils.data.Dataset):
    """Items are images, each with one or more captions; one caption is drawn per epoch."""

    def __init__(self, captions, tokenizer, context_length, train, seed):
        self.captions = captions  # list (one per image) of lists of str
        self.tokenizer, self.context_length = tokenizer, context_length
        self.train, self.seed, self.epoch = train, seed, 0

    def __len__(self):
        return len(self.captions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    caption_weights = None  # None: every caption of an image equally often; else one int per caption

    def caption_index(self, index: int) -> int:
        if not self.train:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, index])  # same draw in any worker
        weights = self.caption_weights or [1] * len(self.captions[index])  # (n captions,)
        draw = int(rng.integers(sum(weights)))  # bounded integers only: stable across numpy versions
        return int(np.searchsorted(np.cumsum(weights), draw, side="right"))  # caption whose share holds it

    def tokens(self, index: int) -> torch.Tensor:
        text = self.captions[index][self.caption_index(index)]
        return torch.tensor(self.tokenizer.encode(text, self.context_length, pad=False))


class TinyShapes(CaptionDataset):
    """A split of tiny_data/ ("train", "val", "test", "test_comp", "classes"), held in memory.

    Training draws the canonical caption two times in three, the existential and relational ones
    one in six each. With three equally likely templates a greedy captioner picks one by a near
    coin flip at the second word ("a large …" or "a red …"), and only the canonical one says each
    object's size and place; this way it is the captioner's default description (measured: half
    of the time left 7% of greedy test captions relational, two in three 1%, and object-F1 rose
    0.50 -> 0.58 at 320 steps), while the other two still teach both losses that one scene has
    several descriptions."""

    caption_weights = (4, 1, 1)  # canonical, existential, relational

    def __init__(self, split, tokenizer=None, context_length=32, train=None, root=TINY_DATA, seed=0, limit=None):
        path = Path(root) / f"{split}.npz"
        if split not in shapes.SPLITS:
            raise ValueError(f"unknown tiny_data split {split!r}; expected one of {list(shapes.SPLITS)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; regenerate with `python -m coca_min.shapes --out {root}`")
        tokenizer = tokenizer or Tokenizer.load(Path(root) / "tokenizer.json")
        with np.load(path) as data:  # `limit`: only the first images, for quick checks
            self.pixels = torch.from_numpy(data["pixels"][:limit])  # (N, 48, 48) palette indices
            self.objects = data["objects"][:limit]  # (N, 3, 5) ground truth, see shapes.py
            captions = data["captions"][:limit].tolist()  # (N, 3) str
        super().__init__(captions, tokenizer, context_length, split == "train" if train is None else train, seed)
        self.palette = torch.from_numpy(shapes.PALETTE)  # (9, 3) uint8

    def images(self, indices) -> torch.Tensor:
        """Normalised images (len(indices), 3, 48, 48), decoded in one vectorised lookup."""
        rgb = self.palette[self.pixels[indices].long()]  # (N, 48, 48, 3) uint8
        return ((rgb.permute(0, 3, 1, 2).float() / 255) - MEAN) / STD

    def __getitem__(self, index):
        return self.images([index])[0], self.tokens(index)

    def __getitems__(self, indices):  # DataLoader's batched fetch: one image lookup per batch
        return list(zip(self.images(indices), [self.tokens(i) for i in indices]))


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
            elif _caption_problem(row.get("caption")):
                bad.append(f"row {n} ({_caption_problem(row.get('caption'))})")
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
            elif _caption_problem(note.get("caption")):
                bad.append(f"annotation {n} ({_caption_problem(note.get('caption'))})")
            else:
                by_id[note["image_id"]].append(note["caption"])
        _skip_or_raise(bad, len(data["annotations"]), f"annotations of {annotations} without a usable caption", strict)
        images = [image for image in data["images"] if by_id[image["id"]]]  # captioned ones only
        paths = [root / image["file_name"] for image in images]
        captions = [by_id[image["id"]] for image in images]
        super().__init__(paths, captions, tokenizer, image_size, context_length, train, strict, seed)
