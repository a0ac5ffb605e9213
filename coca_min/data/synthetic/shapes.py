"""The tiny image-caption world: coloured shapes on a 3x3 grid, with captions and ground truth.

Not part of the paper (which trains on JFT-3B and ALIGN): this is the small stand-in that lets a
real CoCa train on a laptop in minutes. Every image is drawn from its own random stream
`numpy.random.default_rng([split seed, index])` with integer geometry and no anti-aliasing, so
any image of any split can be regenerated alone, bit for bit, on any machine.

A scene has 1-3 objects in distinct cells of a 3x3 grid (small jitter). The 48 px image is cut
into 16 px cells, so each cell is exactly a 2x2 block of the tiny ViT's 8 px patches and each
object sits on the corner where its four patches meet: every patch then shows one quarter of
one object (an arc, a corner, a slope...), and the ViT learns shapes in a few dozen steps. On a
64 px image with cells that straddle patches at shifting offsets, the same ViT needed ~5x as
many steps, and CoCa never learned shape or place within a 5-minute budget.

Each object has a shape (circle, square, triangle, diamond, cross), a colour (8), a size (small,
large). Three caption templates describe it: canonical ("a small red circle at the top left and
a large blue square in the center"), existential ("there is a red circle and a blue square") and
relational ("a red circle is left of a blue square"). Eight colour-shape pairs (HELD_OUT) never
occur in `train`, `val` or `test`; every `test_comp` image has at least one: the compositional
test.

`recombine.py` redraws a training scene for augmentation (the same objects in new cells and
colours), and `scene_captions` describes it.

    python -m coca_min.data.synthetic.shapes --out tiny_data      # regenerates tiny_data/ exactly

Left out: occlusion, rotation, textures, backgrounds; anything that would make captions
ambiguous.
"""

import re

import numpy as np

from coca_min.words import with_article

CELL = 16  # pixels per grid cell: 2x2 patches of 8 px
IMAGE_SIZE = 3 * CELL  # 48 px: a 3x3 grid of cells
SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white"]
SIZES = ["small", "large"]
# palette index 0 is the dark background; index 1 + c is COLOURS[c]
PALETTE = np.array(
    [[16, 16, 24], [230, 30, 30], [30, 200, 40], [40, 90, 255], [240, 230, 40],
     [230, 40, 230], [40, 230, 230], [255, 140, 0], [245, 245, 245]], dtype=np.uint8,
)  # fmt: skip
HELD_OUT = [("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "diamond"),
            ("magenta", "cross"), ("cyan", "circle"), ("orange", "square"), ("white", "triangle")]  # fmt: skip
PAIRS = [(c, s) for c in COLOURS for s in SHAPES]  # all 40 colour-shape pairs
SEEN = [p for p in PAIRS if p not in HELD_OUT]  # the 32 pairs of train / val / test
CELL_CENTRES = [CELL * i + CELL // 2 for i in range(3)]  # 8, 24, 40: rows and columns (patch corners)
RADIUS = {"small": 4, "large": 6}  # half-extent in pixels: a large shape spans 13 px, a small 9
JITTER = 1  # pixel, each way: a shape stays inside its cell, off its first row and column
#             (never clipped by the border, never touching a neighbour)
POSITIONS = [["top left", "top", "top right"], ["left", "center", "right"],
             ["bottom left", "bottom", "bottom right"]]  # fmt: skip
SPLITS = {"train": (30000, 1), "val": (1000, 2), "test": (1000, 3), "test_comp": (1000, 4),
          "classes": (1000, 5)}  # name: (number of images, seed)  # fmt: skip
NO_OBJECT = -1  # fills the unused rows of an (3, 5) objects array

# one object = (shape, colour, size, row, col) as indices into the lists above


def sample_objects(split: str, index: int):
    """The scene of image `index` of `split`: (objects (3, 5) int8, jitter (3, 2) int8)."""
    rng = np.random.default_rng([SPLITS[split][1], index])
    pick = lambda n: int(rng.integers(n))  # only bounded integers: stable across numpy versions
    if split == "classes":  # one object; 25 images for each of the 40 pairs in turn
        n, pairs = 1, [PAIRS[index % len(PAIRS)]]
    else:
        n = 1 + pick(3)
        pool = PAIRS if split == "test_comp" else SEEN
        pairs = [pool[pick(len(pool))] for _ in range(n)]
        if split == "test_comp" and not any(p in HELD_OUT for p in pairs):
            pairs[pick(n)] = HELD_OUT[pick(len(HELD_OUT))]
    cells = _shuffled(rng, 9)[:n]  # n distinct cells
    objects = np.full((3, 5), NO_OBJECT, dtype=np.int8)
    jitter = np.zeros((3, 2), dtype=np.int8)
    for i, ((colour, shape), cell) in enumerate(zip(pairs, sorted(cells))):  # raster order
        size = pick(2)
        objects[i] = [SHAPES.index(shape), COLOURS.index(colour), size, cell // 3, cell % 3]
        jitter[i] = [pick(2 * JITTER + 1) - JITTER, pick(2 * JITTER + 1) - JITTER]
    return objects, jitter


def _shuffled(rng, n: int) -> list[int]:
    """A random order of range(n) (Fisher-Yates with bounded integers only)."""
    order = list(range(n))
    for i in range(n - 1):
        j = i + int(rng.integers(n - i))
        order[i], order[j] = order[j], order[i]
    return order


def shape_mask(shape: str, r: int, dy, dx):
    """Pixels of a shape of half-extent r at offsets (dy, dx) from its centre (integer maths)."""
    if shape == "circle":
        return dy * dy + dx * dx <= r * r + r  # "+ r": no one-pixel nubs at the four poles
    if shape == "square":
        return (abs(dy) <= r - 1) & (abs(dx) <= r - 1)  # same width as the others look
    if shape == "triangle":  # apex up, base of width 2r at the bottom
        return (dy <= r) & (2 * abs(dx) <= dy + r)
    if shape == "diamond":
        return abs(dy) + abs(dx) <= r
    if shape == "cross":
        arm = r // 3
        return ((abs(dx) <= arm) & (abs(dy) <= r)) | ((abs(dy) <= arm) & (abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(objects, jitter) -> np.ndarray:
    """(3, 5) objects, (3, 2) jitter -> (48, 48) uint8 palette indices (see PALETTE)."""
    ys, xs = np.ogrid[:IMAGE_SIZE, :IMAGE_SIZE]  # (48, 1), (1, 48) integer coordinates
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for (shape, colour, size, row, col), (jy, jx) in zip(objects, jitter):
        if shape == NO_OBJECT:
            continue
        cy, cx = CELL_CENTRES[row] + int(jy), CELL_CENTRES[col] + int(jx)
        image[shape_mask(SHAPES[shape], RADIUS[SIZES[size]], ys - cy, xs - cx)] = 1 + colour
    return image


def place_phrase(row: int, col: int) -> str:
    where = POSITIONS[row][col]
    return f"in the {where}" if where == "center" else f"on the {where}" if row == 1 else f"at the {where}"


def _noun(obj, size=False):
    shape, colour, sz = SHAPES[obj[0]], COLOURS[obj[1]], SIZES[obj[2]]
    return with_article(f"{sz} {colour} {shape}" if size else f"{colour} {shape}")


def _place(obj):
    return place_phrase(int(obj[3]), int(obj[4]))


def _relation(a, b):
    if a[4] != b[4]:
        return "left of" if a[4] < b[4] else "right of"
    return "above" if a[3] < b[3] else "below"


def canonical_caption(objects) -> str:
    """"a small red circle at the top left and …": every object in full, in raster order."""
    objs = sorted((o for o in objects if o[0] != NO_OBJECT), key=lambda o: (o[3], o[4]))
    return " and ".join(f"{_noun(o, size=True)} {_place(o)}" for o in objs)


def captions(objects, index: int, split: str) -> list[str]:
    """[canonical, existential, relational] captions of one scene."""
    return scene_captions(objects, np.random.default_rng([SPLITS[split][1], index, 1]))  # word order only


def scene_captions(objects, rng) -> list[str]:
    """[canonical, existential, relational] captions of (3, 5) objects in raster order; `rng`
    draws the order in which the existential and relational captions name them."""
    objs = [o for o in objects if o[0] != NO_OBJECT]  # already in raster order
    order = [objs[i] for i in _shuffled(rng, len(objs))]
    existential = "there is " + " and ".join(_noun(o) for o in order)
    if len(order) == 1:
        relational = f"{_noun(order[0])} is {_place(order[0])}"
    else:
        relational = " and ".join(
            f"{_noun(a)} is {_relation(a, b)} {_noun(b)}" for a, b in zip(order, order[1:])
        )
    return [canonical_caption(objs), existential, relational]


_PHRASE = re.compile(
    rf"\ban? ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) (?:at|on|in) the "
    rf"({'|'.join(sorted((p for row in POSITIONS for p in row), key=len, reverse=True))})\b"
)


def parse_caption(text: str) -> list[tuple]:
    """The objects a caption states in full (canonical phrases "a small red circle at the top
    left"): a list of (shape, colour, size, row, col) index tuples, as in the ground truth.
    Phrases that leave out size or position (existential, relational) state no full object."""
    where = {p: (r, c) for r, row in enumerate(POSITIONS) for c, p in enumerate(row)}
    return [(SHAPES.index(shape), COLOURS.index(colour), SIZES.index(size), *where[place])
            for size, colour, shape, place in _PHRASE.findall(text.lower())]  # fmt: skip


def make_images(split: str, indices=None):
    """Regenerate images of a split: {"pixels" (N, 48, 48) uint8, "objects" (N, 3, 5) int8,
    "captions" (N, 3) str}."""
    indices = range(SPLITS[split][0]) if indices is None else indices
    pixels, objects, texts = [], [], []
    for index in indices:
        objs, jitter = sample_objects(split, index)
        pixels.append(render(objs, jitter))
        objects.append(objs)
        texts.append(captions(objs, index, split))
    return {"pixels": np.stack(pixels), "objects": np.stack(objects), "captions": np.array(texts)}


def save_npz(path, **arrays) -> None:
    """Like np.savez_compressed, but with fixed timestamps: the same arrays give the same file."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)  # fmt: skip


def save_sample_grid(data, path, n=12) -> None:
    """A PNG of the first `n` images of a split with their canonical captions."""
    import textwrap

    from matplotlib.figure import Figure  # to a file, leaving pyplot's backend and figures alone

    fig = Figure(figsize=(2.2 * n // 2, 6.4))
    axes = fig.subplots(2, n // 2)
    for ax, pixels, caption in zip(axes.flat, data["pixels"], data["captions"][:, 0]):
        ax.imshow(PALETTE[pixels], interpolation="nearest")
        ax.set_title(textwrap.fill(str(caption), 26), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def save_png_folder(split_file, folder, count) -> int:
    """The first `count` images of a saved split as PNG files, with every caption of each in a
    JSONL manifest `captions.jsonl` (what `image_files.CaptionManifest` reads): image files to
    try sample.py and train.py --data on. Returns how many were written."""
    import json

    from PIL import Image

    with np.load(split_file) as data:
        pixels, texts = data["pixels"][:count], data["captions"][:count]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, captions_of_image) in enumerate(zip(pixels, texts)):
        Image.fromarray(PALETTE[image]).save(folder / f"{i:05d}.png")
        rows += [json.dumps({"image": f"{i:05d}.png", "caption": str(c)}) for c in captions_of_image]
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return len(pixels)


def main():
    import time
    from pathlib import Path

    from coca_min.cli import Parser, ranged
    from coca_min.data.tokenizer import Tokenizer

    parser = Parser(prog="python -m coca_min.data.synthetic.shapes", description="Regenerate the tiny shapes-with-captions set, "
                    "or (--png) write some of its images as PNG files with a manifest.")  # fmt: skip
    parser.add_argument("--out", default="tiny_data", help="output folder (default: tiny_data)")
    parser.add_argument("--vocab-size", type=ranged(int, minimum=259), default=512, help="tokenizer's largest vocabulary")
    parser.add_argument("--png", metavar="DIR", help="instead: write --count images of --split from tiny_data/ to DIR")
    parser.add_argument("--split", default="test", choices=list(SPLITS), help="--png: which split (default: test)")
    parser.add_argument("--count", type=ranged(int, minimum=1), default=16, help="--png: how many images (default: 16)")
    args = parser.parse_args()
    if args.png:
        source = Path(__file__).resolve().parents[3] / "tiny_data" / f"{args.split}.npz"  # coca_min/data/synthetic/ is three below
        if not source.is_file():
            parser.error(f"{source} not found; regenerate it with `python -m coca_min.data.synthetic.shapes`")
        written = save_png_folder(source, Path(args.png), args.count)
        print(f"{written} {args.split} images -> {args.png}/00000.png …, captions in {args.png}/captions.jsonl")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for split, (count, _) in SPLITS.items():
        data = make_images(split)
        save_npz(out / f"{split}.npz", **data)
        print(f"{split:>9}: {count} images, {data['captions'].size} captions")
        if split == "train":
            tokenizer = Tokenizer.train(data["captions"].ravel().tolist(), args.vocab_size)
            tokenizer.save(out / "tokenizer.json")
            print(f"tokenizer: {tokenizer.vocab_size} ids")
            save_sample_grid(data, out / "samples.png")
    print(f"done in {time.time() - start:.1f} s -> {out}/")


if __name__ == "__main__":
    main()
