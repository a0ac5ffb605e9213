"""Image-caption data as sharded tar files (the WebDataset layout), written and read streaming.

Not a part of the paper (its JFT-3B and ALIGN are private); it is how data at CoCa's scale is
usually stored. A shard `NNNNNN.tar` holds, per sample, members with one key and different
extensions: `key.jpg` (or `.jpeg`, `.png`) and `key.txt` (one caption) or `key.json`
(`{"caption": "..."}` or `{"captions": [...]}`).

Reading (`ShardReader`, an IterableDataset) opens each shard with the standard library's
`tarfile` in stream mode, so a shard is read once from start to end and never held in memory.
Every epoch the shards are shuffled (the same order on every rank) and dealt round-robin to the
world's readers, one per data-loader worker of each rank: reader r of R takes shards r, r + R,
..., so each sample is read exactly once an epoch, and by one reader, in order. A sample that is
incomplete or does not decode is skipped, counted, and named in one warning per shard.

Each item carries its place, (shard name, index in the shard). Within a shard, the items that
training consumed are a prefix, so `{shard: samples consumed}` (`advance`) is an exact position
in the epoch: a reader given it skips what was consumed, even with other numbers of ranks or
workers. A training sample's caption (of several) and random crop are drawn from (seed, epoch,
shard, index) alone: the same in any worker, on any rank, and after a resume. Left out: object stores (s3://, http://), decoding on the GPU, shuffling within a shard.
"""

import io
import json
import os
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import collate, crop_and_resize, read_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


def write_shards(samples, out, per_shard=1000) -> list[Path]:
    """samples: iterable of (key, image, captions) with image an (H, W, 3) uint8 array or the
    bytes of a JPEG/PNG file, captions a list of str. Writes out/000000.tar, 000001.tar, ...
    -> the shards' paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, shard, count = [], None, 0
    try:
        for key, image, captions in samples:
            if shard is None or count == per_shard:
                if shard is not None:
                    shard.close()
                paths.append(out / f"{len(paths):06d}.tar")
                shard, count = tarfile.open(paths[-1], "w"), 0
            if isinstance(image, np.ndarray):  # pixels: stored as PNG, lossless
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                image, extension = buffer.getvalue(), "png"
            else:
                extension = "png" if image[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"
            _add(shard, f"{key}.{extension}", image)
            _add(shard, f"{key}.json", json.dumps({"captions": list(captions)}).encode())
            count += 1
    finally:
        if shard is not None:
            shard.close()
    return paths


def _add(shard, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    shard.addfile(info, io.BytesIO(data))


def samples_of(path: Path):
    """(key, {extension: bytes}) of each sample of one shard, in order, streaming; a shard that
    breaks off ends there (the error is yielded in place of the rest, as key None)."""
    key, parts = None, {}
    try:
        with tarfile.open(path, mode="r|*") as shard:
            for member in shard:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                stem, _, extension = name.partition(".")
                if stem != key and key is not None:
                    yield key, parts
                    parts = {}
                key = stem
                parts[extension.lower()] = shard.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        if key is not None:
            yield key, parts
        yield None, {"error": f"the shard breaks off ({error})"}
        return
    if key is not None:
        yield key, parts
    if not _ends_properly(path):  # tarfile stops quietly at a header cut short: say so
        yield None, {"error": "the shard breaks off (no end-of-archive blocks: a copy cut short?)"}


def _ends_properly(path: Path) -> bool:
    """A tar archive ends with two 512-byte blocks of zeros (padded to a whole record)."""
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - 1024))
        return file.read() == bytes(1024)


def decode_sample(parts: dict) -> tuple[torch.Tensor, list[str]]:
    """(3, H, W) uint8 pixels and the captions of one sample; ValueError if it lacks either."""
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    if image is None:
        raise ValueError(f"no image (.jpg or .png) among {sorted(parts)}")
    captions = captions_in(parts)
    try:
        pixels = read_image(io.BytesIO(image))
    except Exception as error:
        raise ValueError(f"the image does not decode ({error})") from None
    return pixels, captions


def captions_in(parts: dict) -> list[str]:
    """The captions of one sample (its .txt, or its .json's "caption" or "captions")."""
    if "txt" in parts:
        captions = [parts["txt"].decode("utf-8")]
    elif "json" in parts:
        meta = json.loads(parts["json"].decode("utf-8"))
        captions = meta.get("captions") or [meta.get("caption")]
    else:
        raise ValueError(f"no caption (.txt or .json) among {sorted(parts)}")
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError("an empty caption")
    return captions


def all_captions(source) -> list[str]:
    """Every caption in the shards of `source` (a folder or a list of paths), one pass, images
    not decoded: what a tokenizer is trained on. Samples without a caption are left out."""
    from tqdm import tqdm

    paths = sorted(Path(source).glob("*.tar")) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    captions = []
    quiet = len(paths) < 20 or int(os.environ.get("RANK", 0)) > 0  # under torchrun: rank 0's bar only
    for path in tqdm(paths, desc="reading the shards' captions", unit="shard", disable=quiet):
        for key, parts in samples_of(path):
            try:
                captions += captions_in(parts) if key is not None else []
            except (ValueError, UnicodeDecodeError):
                continue
    return captions


class ShardReader(torch.utils.data.IterableDataset):
    """Items (uint8 image (3, S, S), tokens (T,), (shard name, index)) of the shards in `source` (a
    folder of NNNNNN.tar or a list of paths). `done` ({shard name: samples consumed}) resumes
    an epoch; `rank` and `world` default to torch.distributed's."""

    def __init__(self, source, tokenizer, image_size, context_length, train=True, seed=0, done=None,
                 rank=None, world=None):  # fmt: skip
        paths = sorted(Path(source).glob("*.tar")) if isinstance(source, (str, Path)) else [Path(p) for p in source]
        if not paths:
            raise FileNotFoundError(f"no .tar shards in {source}")
        self.shards, self.tokenizer, self.image_size = paths, tokenizer, image_size
        self.context_length, self.train, self.seed, self.epoch = context_length, train, seed, 0
        self.done, self.rank, self.world = dict(done or {}), rank, world
        self.skipped = 0  # in this process (each data-loader worker counts its own, and warns)

    def set_epoch(self, epoch: int, done=None) -> None:
        self.epoch, self.done = epoch, dict(done or {})

    def my_shards(self) -> list[Path]:
        """This reader's shards this epoch: every R-th of the shuffled list, R the world's readers."""
        distributed = torch.distributed.is_initialized()
        rank = self.rank if self.rank is not None else (torch.distributed.get_rank() if distributed else 0)
        world = self.world if self.world is not None else (torch.distributed.get_world_size() if distributed else 1)
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        order = list(self.shards)
        if self.train:  # the same order on every rank and worker: a generator seeded by the epoch
            shuffle = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            order = [order[i] for i in shuffle]
        readers, me = world * workers, rank * workers + worker_id
        if len(order) < readers and me == 0 and self.epoch == 0:
            warnings.warn(f"{len(order)} shard{'s' * (len(order) != 1)} for {readers} readers ({world} ranks x {workers} "
                          "workers): some readers get none; write smaller shards (python -m coca_min.data.shards "
                          "--per-shard N) or use fewer workers")  # fmt: skip
        return order[me::readers]

    def __iter__(self):
        for path in self.my_shards():
            bad, broken = [], ""
            for index, (key, parts) in enumerate(samples_of(path)):
                if key is None:  # the end of a shard cut short: not a sample
                    broken = parts["error"]
                    continue
                if index < self.done.get(path.name, 0):
                    continue  # consumed before the checkpoint
                try:
                    pixels, captions = decode_sample(parts)
                except (ValueError, UnicodeDecodeError) as error:
                    bad.append(f"{key}: {error}")
                    continue
                rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(path.name.encode()), index])
                caption = captions[int(rng.integers(len(captions))) if self.train else 0]
                tokens = torch.tensor(self.tokenizer.encode(caption, self.context_length, pad=False))
                crop = torch.Generator().manual_seed(int(rng.integers(2**62))) if self.train else None
                yield crop_and_resize(pixels, self.image_size, self.train, crop), tokens, (path.name, index)
            if bad or broken:
                self.skipped += len(bad)
                first = f" ({bad[0]}{', ...' if len(bad) > 1 else ''})" if bad else ""
                said = [f"{len(bad)} sample{'s' * (len(bad) != 1)} skipped{first}"] * bool(bad) + [broken] * bool(broken)
                warnings.warn(f"{path.name}: " + "; ".join(said))


def shard_collate(batch, pad_id=0, multiple=1, context_length=None):
    """[(image, tokens, place), ...] -> images (B, 3, S, S), tokens (B, T) padded (`collate`),
    places [(shard, index)]."""
    images, tokens = collate([(image, t) for image, t, _ in batch], pad_id, multiple, context_length)
    return images, tokens, [place for _, _, place in batch]


def advance(done: dict, places) -> dict:
    """The position after consuming `places`: {shard: samples consumed}, a prefix of each shard."""
    for shard, index in places:
        done[shard] = max(done.get(shard, 0), index + 1)
    return done

def main(argv=None):
    """python -m coca_min.data.shards (--tiny SPLIT | --manifest FILE --images DIR) --out DIR"""
    from tqdm import tqdm

    from coca_min.cli import Parser

    from .datasets import TinyShapes
    from .image_files import CaptionManifest
    from .synthetic.shapes import SPLITS

    parser = Parser(prog="python -m coca_min.data.shards",
                    description="write image-caption data as NNNNNN.tar shards (the WebDataset layout)")  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", metavar="SPLIT", choices=list(SPLITS), help="a split of tiny_data/")
    source.add_argument("--manifest", help="a .jsonl or .csv manifest (fields image, caption)")
    parser.add_argument("--images", help="the folder the manifest's image paths are relative to")
    parser.add_argument("--out", required=True, help="the folder of the shards (new, or empty)")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: give a new folder")
    if args.per_shard < 1:
        parser.error("--per-shard must be at least 1")
    if args.tiny:
        data = TinyShapes(args.tiny)
        rgb = data.palette[data.pixels.long()].numpy()  # (N, 48, 48, 3) uint8
        samples = ((f"{args.tiny}_{i:06d}", rgb[i], data.captions[i]) for i in range(len(data)))
    else:
        if not args.images:
            parser.error("--manifest needs --images, the folder its image paths are relative to")
        data = CaptionManifest(args.manifest, args.images, tokenizer=None, image_size=1)

        def samples():  # JPEG and PNG files as they are; other formats as PNG
            for i, path in enumerate(data.paths):
                raw = path.read_bytes()
                if not (raw[:3] == b"\xff\xd8\xff" or raw[:8] == b"\x89PNG\r\n\x1a\n"):
                    with Image.open(path) as img:
                        raw = np.asarray(img.convert("RGB"))
                yield f"{i:08d}", raw, data.captions[i]

        samples = samples()
    samples = tqdm(samples, total=len(data), desc="writing shards", unit="sample", disable=None)  # None: not in a log file
    paths = write_shards(samples, out, args.per_shard)
    print(f"wrote {len(data):,} samples in {len(paths)} shards to {out}")


if __name__ == "__main__":
    main()
