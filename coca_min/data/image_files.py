"""Captioned image files on disk: a folder of images with a JSONL or CSV manifest, or COCO
caption JSON. Not a part of the paper (its JFT-3B and ALIGN are private).

- `CaptionManifest`: a folder of images and a JSONL or CSV manifest with `image`, `caption`.
- `CocoCaptions`: COCO-style caption JSON (`images` + `annotations`), several captions per image
  (COCO, Flickr30k in Karpathy's conversion, and most people's own sets).

Files that are missing or unreadable, and rows that are not JSON, not UTF-8 or without an image
and a usable caption, are skipped with one warning that counts them and names where they are
(`line 7`, `annotations[4]`), or raise in `strict` mode: a long run never dies on file 90,000
of 100,000. A file that breaks after the check is replaced by the next image while training, and
left out (never replaced) in evaluation.

Left out: object stores, decoding on the GPU. Tar shards (the WebDataset layout): `shards.py`.
"""

import csv
import io
import json
import sys
import warnings
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from coca_min.words import with_article

from .datasets import CaptionDataset, crop_and_resize, crop_generator, read_image


class ImageFiles(CaptionDataset):
    """Captioned image files on disk. Files that cannot be read when the set is built are left
    out with one warning that counts them (`strict=True`: an error, and every image is decoded
    to the end to find truncated files, which takes longer). A file that breaks later:

    - while training (`train=True`), the next readable image takes its place, so that batches
      keep their size (the all-gather of DDP needs equal shapes); the first is warned about.
    - in evaluation, nothing is substituted: the item is None, and the evaluation leaves the image
      (and its captions) out with a warning that counts them (`strict=True`: an error).
    """

    def __init__(self, paths, captions, tokenizer, image_size, context_length, train, strict, seed=0):
        quiet = len(paths) < 5000 or not sys.stderr.isatty()  # a bar only in a terminal, not in a log
        checking = tqdm(paths, desc="checking images", disable=quiet, leave=False)
        problems = [_unreadable(path, decode=strict) for path in checking]  # None where the file is fine
        bad = [f"{path} ({why})" for path, why in zip(paths, problems) if why]
        _skip_or_raise(bad, len(paths), "images that cannot be read", strict)
        keep = [i for i, why in enumerate(problems) if why is None]
        self.paths = [paths[i] for i in keep]
        super().__init__([captions[i] for i in keep], tokenizer, context_length, train, seed)
        self.image_size, self.strict, self.failed = image_size, strict, 0

    def load(self, i):
        """(3, S, S) uint8 pixels of file i, cropped and resized (`datasets.normalize` makes them
        model input); an error that names the file. A training crop is drawn from (seed, epoch,
        i): the same in any worker and after a resume."""
        try:
            pixels = read_image(self.paths[i])
        except Exception as error:
            raise OSError(f"could not decode {self.paths[i]} ({error})") from error
        crop = crop_generator(self.seed, self.epoch, i, 1) if self.train else None  # 1: not the caption's stream
        return crop_and_resize(pixels, self.image_size, self.train, crop)

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
        return None  # evaluation: left out (coca_min/eval/evaluate.py counts it); training: no image readable


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
        return f"caption is not text but {with_article(type(caption).__name__)}"
    if not caption.strip():
        return "empty caption"
    if _not_utf8(caption):
        return "caption has bytes that are not UTF-8"
    return None


def _image_problem(name, field="image"):
    """None if `name` can be an image file name, else what is wrong with it."""
    if name is None:
        return f"no {field}"
    if not isinstance(name, str) or not name.strip():
        return f"{field} is {name!r}, not a file name"
    if _not_utf8(name):
        return f"{field} has bytes that are not UTF-8"
    return None


def _read_text(path: Path) -> str:
    """The file's text. Bytes that are not UTF-8 become lone surrogates (Python's
    "surrogateescape"), so that one bad row is found, named and skipped, not the whole file."""
    return path.read_bytes().decode("utf-8-sig", errors="surrogateescape")  # -sig: a spreadsheet's BOM


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:  # a lone surrogate left by _read_text
        return True


def _unreadable(path: Path, decode=False):
    """None if `path` is an image file PIL can open (`decode`: and decode to the end, which
    finds a truncated JPEG that the quicker `verify()` passes), else a short reason."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as img:
            img.load() if decode else img.verify()
    except Exception as error:  # PIL's message, unless it only repeats the path
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return message if message and str(path) not in message else type(error).__name__
    return None


def _folder(image_root) -> Path:
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return root


class CaptionManifest(ImageFiles):
    """A manifest (.jsonl or .csv, fields `image` and `caption`) of files under `image_root`.
    Rows naming the same image are gathered into one item with several captions. A row that is
    not JSON, has no image or no usable caption (missing, null, empty, not UTF-8) is skipped
    and counted by its line number (`strict=True`: an error)."""

    def __init__(self, manifest, image_root, tokenizer, image_size, context_length=64,
                 train=False, strict=False, seed=0):  # fmt: skip
        manifest, root = Path(manifest), _folder(image_root)
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        rows, bad = _csv_rows(manifest) if manifest.suffix.lower() == ".csv" else _jsonl_rows(manifest)
        total, by_image = len(rows) + len(bad), {}  # bad: so far the lines that are not JSON
        for line, row in rows:
            if not isinstance(row, dict):
                bad.append((line, f"expected an object with 'image' and 'caption', got {with_article(type(row).__name__)}"))
            elif "image" not in row:  # other field names, e.g. "file_name" and "text"
                bad.append((line, f"expected the fields 'image' and 'caption', got {sorted(row)}"))
            elif why := _image_problem(row.get("image")) or _caption_problem(row.get("caption")):
                bad.append((line, why))
            else:
                by_image.setdefault(row["image"], []).append(row["caption"])
        bad = [f"line {line} ({why})" for line, why in sorted(bad)]
        if not by_image:
            raise ValueError(f"{manifest}: no row has an image and a caption" + ("; " + "; ".join(bad[:3]) if bad else " (it has no rows)"))
        _skip_or_raise(bad, total, f"rows of {manifest} without an image and a caption", strict)
        paths = [root / name for name in by_image]
        super().__init__(paths, list(by_image.values()), tokenizer, image_size, context_length, train, strict, seed)


def _jsonl_rows(manifest):
    """[(line number, parsed row)], [(line number, why) of the lines that are not JSON]."""
    rows, bad = [], []
    for n, line in enumerate(_read_text(manifest).split("\n"), start=1):  # not splitlines: U+2028 is JSON text
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as error:
                bad.append((n, f"not JSON: {error.msg} (column {error.colno})"))
            except RecursionError:
                bad.append((n, "not JSON that can be read: nested too deeply"))
    return rows, bad


def _csv_rows(manifest):
    """[(line number where the row starts, row dict)], [(line number, why) of rows that are not
    CSV]. The first line names the fields; blank lines are passed over. A quote that is never
    closed is one bad row at the line where it opens (the reader is strict about quotes)."""
    reader = csv.reader(io.StringIO(_read_text(manifest), newline=""), strict=True)
    header, rows, bad = None, [], []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. an unclosed quote, a field over csv's size limit
            span = f", lines {start}-{reader.line_num}: a quote not closed?" if reader.line_num > start else ""
            bad.append((start, f"not CSV: {error}{span}"))
            continue
        if not fields:
            continue  # a blank line
        if header is None:
            header = fields
            if "image" not in header or "caption" not in header:
                raise ValueError(f"{manifest}: the first line must name the columns 'image' and 'caption'; it has {header}")
            continue
        if len(fields) > len(header):  # e.g. an unquoted comma in a caption: the rest would be lost
            bad.append((start, f"{len(fields)} fields, but the first line names {len(header)} (quote a caption that has a comma)"))
            continue
        rows.append((start, dict(zip(header, fields))))  # a short row has no caption: found by the caller
    if header is None:
        raise ValueError(f"{manifest}: no row has an image and a caption (it has no rows)")
    return rows, bad


class CocoCaptions(ImageFiles):
    """COCO caption JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.
    An image entry without an id or file name, an annotation without a usable caption or whose
    image_id names no image is skipped and counted by its place in the file, e.g.
    `annotations[4]` (`strict=True`: an error); images without captions are left out."""

    def __init__(self, annotations, image_root, tokenizer, image_size, context_length=64,
                 train=False, strict=False, seed=0):  # fmt: skip
        annotations, root = Path(annotations), _folder(image_root)
        if not annotations.is_file():
            raise FileNotFoundError(f"caption file not found: {annotations}")
        try:
            data = json.loads(_read_text(annotations))
        except json.JSONDecodeError as error:
            raise ValueError(f"{annotations} is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
        except RecursionError:
            raise ValueError(f"{annotations} is not COCO caption JSON (nested too deeply to read)") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
            raise ValueError(f"{annotations}: expected COCO caption JSON, an object with lists 'images' and 'annotations'")
        by_id, names, bad_images, skipped = {}, {}, [], {}  # skipped: image id -> its place in "images"
        for n, image in enumerate(data["images"]):
            image_id = image.get("id") if isinstance(image, dict) else None
            if not isinstance(image, dict):
                bad_images.append(f"images[{n}] ({with_article(type(image).__name__)}, not an object)")
            elif not isinstance(image_id, (int, str)):
                bad_images.append(f"images[{n}] ({'no id' if image_id is None else f'id is {image_id!r}, not an int or str'})")
            elif why := _image_problem(image.get("file_name"), "file_name"):
                bad_images.append(f"images[{n}] ({why})")
                skipped[image_id] = n
            else:
                by_id[image_id], names[image_id] = [], image["file_name"]
        _skip_or_raise(bad_images, len(data["images"]), f"images of {annotations} without an id and a file_name", strict)
        bad = []
        for n, note in enumerate(data["annotations"]):
            if not isinstance(note, dict):
                bad.append(f"annotations[{n}] ({with_article(type(note).__name__)}, not an object)")
            elif isinstance(note.get("image_id"), (int, str)) and note["image_id"] in skipped:
                bad.append(f"annotations[{n}] (its image, images[{skipped[note['image_id']]}], was skipped)")
            elif not isinstance(note.get("image_id"), (int, str)) or note["image_id"] not in by_id:
                bad.append(f"annotations[{n}] (image_id {note.get('image_id')!r} names no image)")
            elif why := _caption_problem(note.get("caption")):
                bad.append(f"annotations[{n}] ({why})")
            else:
                by_id[note["image_id"]].append(note["caption"])
        _skip_or_raise(bad, len(data["annotations"]), f"annotations of {annotations} without a usable caption", strict)
        captioned = [i for i in by_id if by_id[i]]  # images without captions are left out
        if not captioned:
            raise ValueError(f"{annotations}: no image has a usable caption" + "".join(f"; {b}" for b in (bad_images + bad)[:3]))
        paths = [root / names[i] for i in captioned]
        super().__init__(paths, [by_id[i] for i in captioned], tokenizer, image_size, context_length, train, strict, seed)
