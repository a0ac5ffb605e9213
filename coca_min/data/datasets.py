"""Image-caption data sets, image preprocessing in plain torch, and batching.

Not a part of the paper (its JFT-3B and ALIGN are private); this is how coca_min feeds pairs to
CoCa:

- `TinyShapes`: the shipped `tiny_data/` set by split name, decoded images kept in memory.
- `CaptionDataset`: what every set shares (captions, one drawn per image per epoch).
- Image files on disk, a manifest or COCO caption JSON: `image_files.py`.

Training draws one caption per image per epoch (call `set_epoch`); evaluation reads them all
(`.captions`). Images from files stay uint8 through cropping, resizing, batching and the copy to
the device, where `normalize` makes them floats; the tiny set's are made normalised floats at
once (they are in memory, and tiny).

The tiny set's training images can be recombined (`recombine=True`, train.py's default): each
epoch moves each image's objects to new cells and gives them new colours of their seen pairs,
with captions to match (`synthetic/recombine.py`; never a held-out pair).

Left out: torchvision (everything here is a few lines of torch), colour jitter and flips on
real images (a flip would turn "left" into "right" in the captions).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .synthetic import shapes
from .synthetic.recombine import recombine
from .tokenizer import PAD, Tokenizer

TINY_DATA = Path(__file__).resolve().parents[2] / "tiny_data"  # coca_min/data/ is two below the repository
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)  # CLIP's RGB statistics
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


def read_image(source) -> torch.Tensor:
    """An image file (a path, or a file object of its bytes) -> (3, H, W) uint8 RGB pixels.
    PIL's error if it does not decode."""
    from PIL import Image

    with Image.open(source) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def crop_and_resize(image: torch.Tensor, size: int, train: bool = False, generator=None) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8: a square crop, resized (antialiased bilinear).

    Evaluation takes the centre square of the shorter side; training a random square of 85-100%
    of the shorter side at a random place (light random-crop augmentation), drawn from
    `generator` (default: torch's global one; data sets pass one seeded by the sample, see
    `crop_generator`). It stays uint8: a quarter of float32's bytes to resize, to pin and to
    copy to the GPU (measured: 4.3 ms against 10.6 ms for a 640x480 JPEG); `normalize` makes
    floats, on the device.
    """
    _, H, W = image.shape
    side = min(H, W)
    if train:
        side = max(1, int(side * (0.85 + 0.15 * torch.rand((), generator=generator).item())))  # 1 px stays 1 px
        top, left = (torch.randint(n - side + 1, (), generator=generator).item() for n in (H, W))
    else:
        top, left = (H - side) // 2, (W - side) // 2
    crop = image[None, :, top : top + side, left : left + side]  # (1, 3, side, side) uint8
    if side != size:
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return crop[0]


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 3, S, S) -> float32 (x / 255 - MEAN) / STD, on the pixels' device.
    Floating-point images are taken to be normalised already and returned as they are."""
    if pixels.is_floating_point():
        return pixels
    if pixels.device not in _STATISTICS:  # copied to a GPU once: each copy there makes the CPU wait
        _STATISTICS[pixels.device] = MEAN.to(pixels.device), STD.to(pixels.device)
    mean, std = _STATISTICS[pixels.device]
    return (pixels.float() / 255 - mean) / std


_STATISTICS = {}  # device -> (MEAN, STD) on it


def preprocess(image: torch.Tensor, size: int, train: bool = False, generator=None) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) normalised float: `crop_and_resize`, then `normalize`.
    For one image at a time (sample.py, the index); data sets keep uint8 until the device."""
    return normalize(crop_and_resize(image, size, train, generator))


def crop_generator(seed: int, epoch: int, *sample) -> torch.Generator:
    """The generator of one training sample's random crop, seeded by (seed, epoch, the sample's
    keys) alone: the same crop in any data-loader worker, on any rank, and after a resume, and
    other crops for other samples (and on other ranks, which read other samples)."""
    rng = np.random.default_rng([seed, epoch, *sample])
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def collate(batch, pad_id: int = PAD, multiple: int = 1, context_length: int | None = None):
    """[(image (3, S, S), tokens (T_i,)), …] -> images (B, 3, S, S), tokens (B, T) padded, T the
    longest T_i rounded up to a `multiple` (at most `context_length`): training pads to a
    multiple of 8, so that torch.compile sees a few lengths, not a new one every batch. Items
    that failed to load (None) are dropped."""
    batch = [item for item in batch if item is not None]
    if not batch:
        raise ValueError("every image of this batch failed to load")
    images = torch.stack([image for image, _ in batch])
    tokens = torch.nn.utils.rnn.pad_sequence([t for _, t in batch], batch_first=True, padding_value=pad_id)
    length = -(-tokens.shape[1] // multiple) * multiple  # rounded up
    length = max(tokens.shape[1], min(length, context_length or length))
    return images, F.pad(tokens, (0, length - tokens.shape[1]), value=pad_id)


def palette_images(palette, pixels) -> torch.Tensor:
    """(9, 3) uint8 palette, (N, 48, 48) palette indices -> normalised RGB images (N, 3, 48, 48)."""
    rgb = palette[pixels.long()]  # (N, 48, 48, 3) uint8
    return ((rgb.permute(0, 3, 1, 2).float() / 255) - MEAN) / STD


class CaptionDataset(torch.utils.data.Dataset):
    """Items are images, each with one or more captions; one caption is drawn per epoch. The
    tokenizer may be None at first and set later (train.py trains one on `.captions`)."""

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
        return self.encode(self.captions[index][self.caption_index(index)])

    def encode(self, text: str) -> torch.Tensor:
        """One caption's token ids (T,), [BOS] … [EOS], unpadded (collate pads the batch)."""
        if self.tokenizer is None:
            raise ValueError("this data set has no tokenizer yet: set .tokenizer (e.g. Tokenizer.train on .captions)")
        return torch.tensor(self.tokenizer.encode(text, self.context_length, pad=False))


class TinyShapes(CaptionDataset):
    """A split of tiny_data/ ("train", "val", "test", "test_comp", "classes"), held in memory.

    Training draws the canonical caption four times in five, the existential and relational ones
    one in ten each. With three equally likely templates a greedy captioner picks one by a near
    coin flip at the second word ("a large …" or "a red …"), and only the canonical one says each
    object's size and place; this way it is the captioner's default description, while the other
    two still teach both losses that one scene has several descriptions. Measured: half of the
    time left 7% of greedy test captions relational, two in three 1% (object-F1 0.50 -> 0.58 at
    320 steps); four in five, against two in three, raised object-F1 0.80 -> 0.85 and 0.44 ->
    0.52 on held-out pairs at 600 steps (recombined, seeds 0 and 1) and cost zero-shot 0.84 -> 0.80.

    With `recombine` (training only), an image is each epoch a new scene of the same objects
    (`synthetic/recombine.py`: new cells, new colours of seen pairs, the captions rewritten), drawn
    from (seed, epoch, index) like the caption."""

    caption_weights = (8, 1, 1)  # canonical, existential, relational

    def __init__(self, split, tokenizer=None, context_length=32, train=None, root=TINY_DATA, seed=0, limit=None,
                 recombine=False):  # fmt: skip
        path = Path(root) / f"{split}.npz"
        if split not in shapes.SPLITS:
            raise ValueError(f"unknown tiny_data split {split!r}; expected one of {list(shapes.SPLITS)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; regenerate with `python -m coca_min.data.synthetic.shapes --out {root}`")
        tokenizer = tokenizer or Tokenizer.load(Path(root) / "tokenizer.json")
        with np.load(path) as data:  # `limit`: only the first images, for quick checks
            self.pixels = torch.from_numpy(data["pixels"][:limit])  # (N, 48, 48) palette indices
            self.objects = data["objects"][:limit]  # (N, 3, 5) ground truth, see synthetic/shapes.py
            captions = data["captions"][:limit].tolist()  # (N, 3) str
        super().__init__(captions, tokenizer, context_length, split == "train" if train is None else train, seed)
        self.palette = torch.from_numpy(shapes.PALETTE)  # (9, 3) uint8
        self.recombine = recombine  # training: each epoch, each image's objects in new cells and colours

    def images(self, indices) -> torch.Tensor:
        """Normalised images (len(indices), 3, 48, 48), decoded in one vectorised lookup."""
        return palette_images(self.palette, self.pixels[indices])

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):  # DataLoader's batched fetch: one image lookup per batch
        if not (self.train and self.recombine):
            return list(zip(self.images(indices), [self.tokens(i) for i in indices]))
        pixels, tokens = [], []
        for i in indices:  # this epoch's scene of image i: its own stream, the same in any worker
            rng = np.random.default_rng([self.seed, self.epoch, i, 2])
            image, objects = recombine(self.pixels[i].numpy(), self.objects[i], rng)
            text = shapes.scene_captions(objects, rng)[self.caption_index(i)]
            pixels.append(torch.from_numpy(image))
            tokens.append(self.encode(text))
        return list(zip(palette_images(self.palette, torch.stack(pixels)), tokens))
