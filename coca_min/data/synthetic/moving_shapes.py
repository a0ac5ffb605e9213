"""The tiny video world: one coloured shape moving or changing size across 8 frames, with captions.

Not part of the paper: this is the small stand-in for its video action recognition (§4.2), where
CoCa feeds the frames of a clip one by one to the image encoder and pools their tokens. Frames are
48 px palette images exactly like shapes.py's ("a red circle moving left", "a blue square
growing"), so the tiny image encoder reads them unchanged. Every clip is drawn from its own
random stream `numpy.random.default_rng([split seed, index])` with bounded integer draws only:
any clip of any split regenerates alone, bit for bit, and any number of clips per split can be
made on demand (nothing is written to tiny_data/).

A clip has one object (a colour-shape pair from shapes.SEEN) and one of six motions, index % 6:
four moves of SPEED px per frame (small or large radius) and growing / shrinking (radius 3 -> 7
or 7 -> 3, centre fixed). Every frame's whole shape stays inside the frame with a 1 px margin.
The distribution is symmetric under time reversal: a "moving left" clip played backwards is a
"moving right" clip of the same probability, growing reversed is shrinking. So any order-free
summary of the frames (their average, a pooling that ignores frame positions) cannot tell a
motion from its reverse: telling them apart takes knowing which frame came first.

Left out: several objects, occlusion, rotation, camera motion, variable speed.
"""

import re

import numpy as np

from coca_min.words import with_article

from . import shapes

FRAMES = 8
SPEED = 3  # pixels per frame
MOTIONS = ["moving left", "moving right", "moving up", "moving down", "growing", "shrinking"]
SPLITS = {"train": 21, "val": 22, "test": 23}  # name: seed; clips are made on demand, any number
SIZE = shapes.IMAGE_SIZE  # 48 px frames
LOW, HIGH = 1, SIZE - 2  # first and last pixel a shape may cover: a 1 px margin all round
PATH = SPEED * (FRAMES - 1)  # 21 px from the first frame's centre to the last's
GROWTH = [round(3 + 4 * t / (FRAMES - 1)) for t in range(FRAMES)]  # radius 3, 4, 4, 5, 5, 6, 6, 7

# a clip = {"shape", "colour", "motion": indices into shapes.SHAPES, shapes.COLOURS, MOTIONS;
#           "track": (FRAMES, 3) int64 of (centre y, centre x, radius) per frame}
# a shape of half-extent r covers rows and columns centre - r .. centre + r at most (shapes.shape_mask)


def sample_clip(split: str, index: int) -> dict:
    """Clip `index` of `split` (see the comment above for its keys)."""
    rng = np.random.default_rng([SPLITS[split], index])
    pick = lambda lo, hi: lo + int(rng.integers(hi - lo + 1))  # lo..hi inclusive, bounded integers only
    colour, shape = shapes.SEEN[pick(0, len(shapes.SEEN) - 1)]
    motion = index % len(MOTIONS)
    name = MOTIONS[motion]
    if name in ("growing", "shrinking"):
        radius = np.array(GROWTH if name == "growing" else GROWTH[::-1])
        r = max(GROWTH)
        y, x = (np.full(FRAMES, pick(LOW + r, HIGH - r)) for _ in range(2))
    else:
        r = shapes.RADIUS[shapes.SIZES[pick(0, 1)]]
        path = pick(LOW + r, HIGH - r - PATH) + SPEED * np.arange(FRAMES)  # the path's low end, uniform...
        if name in ("moving left", "moving up"):
            path = path[::-1]  # ...then oriented: a move and its reverse share every path
        other = np.full(FRAMES, pick(LOW + r, HIGH - r))  # the still coordinate, full range
        y, x = (path, other) if name in ("moving up", "moving down") else (other, path)
        radius = np.full(FRAMES, r)
    track = np.stack([y, x, radius], axis=1).astype(np.int64)
    return {"shape": shapes.SHAPES.index(shape), "colour": shapes.COLOURS.index(colour), "motion": motion,
            "track": track}  # fmt: skip


def render_clip(clip) -> np.ndarray:
    """A clip -> (FRAMES, 48, 48) uint8 palette indices (0 background, 1 + colour)."""
    ys, xs = np.ogrid[:SIZE, :SIZE]  # (48, 1), (1, 48) integer coordinates
    frames = np.zeros((FRAMES, SIZE, SIZE), dtype=np.uint8)
    for frame, (cy, cx, r) in zip(frames, clip["track"]):
        frame[shapes.shape_mask(shapes.SHAPES[clip["shape"]], int(r), ys - cy, xs - cx)] = 1 + clip["colour"]
    return frames


def clip_caption(clip) -> str:
    """"a red circle moving left", "an orange square growing"."""
    return with_article(
        f"{shapes.COLOURS[clip['colour']]} {shapes.SHAPES[clip['shape']]} {MOTIONS[clip['motion']]}"
    )


_PHRASE = re.compile(
    rf"\ban? ({'|'.join(shapes.COLOURS)}) ({'|'.join(shapes.SHAPES)}) ({'|'.join(MOTIONS)})\b"
)


def parse_caption(text: str):
    """(shape, colour, motion) indices a caption states, or None unless it states all three."""
    found = _PHRASE.search(text.lower())
    if found is None:
        return None
    colour, shape, motion = found.groups()
    return shapes.SHAPES.index(shape), shapes.COLOURS.index(colour), MOTIONS.index(motion)


def make_clips(split: str, count: int) -> dict:
    """Clips 0..count-1 of a split: {"frames" (N, FRAMES, 48, 48) uint8, "labels" (N, 3) int64
    (shape, colour, motion), "captions" list of N str}."""
    clips = [sample_clip(split, index) for index in range(count)]
    frames = np.zeros((count, FRAMES, SIZE, SIZE), dtype=np.uint8)
    for i, clip in enumerate(clips):
        frames[i] = render_clip(clip)
    labels = np.array([[c["shape"], c["colour"], c["motion"]] for c in clips], dtype=np.int64)
    labels = labels.reshape(count, 3)  # (0, 3) when count is 0
    return {"frames": frames, "labels": labels, "captions": [clip_caption(c) for c in clips]}


def to_pixels(frames):
    """(N, FRAMES, 48, 48) palette indices -> (N, FRAMES, 3, 48, 48) float, normalised exactly as
    data.TinyShapes.images normalises an image."""
    import torch

    from coca_min.data.datasets import MEAN, STD

    rgb = torch.from_numpy(shapes.PALETTE)[torch.as_tensor(np.asarray(frames)).long()]  # (N, F, 48, 48, 3)
    return ((rgb.permute(0, 1, 4, 2, 3).float() / 255) - MEAN) / STD


def save_filmstrip(data, path, n=6) -> None:
    """A PNG of the first `n` clips of `make_clips`'s output: one row per clip, time left to right."""
    from matplotlib.figure import Figure  # to a file, leaving pyplot's backend and figures alone

    n = min(n, len(data["frames"]))
    fig = Figure(figsize=(1.2 * FRAMES, 1.45 * n + 0.5))
    axes = fig.subplots(n, FRAMES, squeeze=False)
    for row, frames, text in zip(axes, data["frames"], data["captions"]):
        for ax, frame in zip(row, frames):
            ax.imshow(shapes.PALETTE[frame], interpolation="nearest")
            ax.axis("off")
        row[0].set_title(text, loc="left", fontsize=9)
    fig.suptitle(f"moving shapes: {FRAMES} frames per clip, time runs left to right", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
