"""tiny_data/: the committed arrays are exactly what the generator makes, and the splits keep
their promises (held-out colour-shape pairs, counts, one object per class image)."""

import re

import numpy as np
import pytest
import torch

from coca_min.data.datasets import TINY_DATA, normalize
from coca_min.data.synthetic import shapes


@pytest.fixture(scope="module")
def committed():
    return {split: dict(np.load(TINY_DATA / f"{split}.npz")) for split in shapes.SPLITS}


@pytest.mark.parametrize("split", list(shapes.SPLITS))
def test_regenerating_sample_indices_reproduces_committed_arrays(committed, split):
    n = shapes.SPLITS[split][0]
    indices = sorted({0, 1, n - 1} | set(np.random.default_rng(0).integers(n, size=40).tolist()))
    fresh = shapes.make_images(split, indices)
    for name in ["pixels", "objects", "captions"]:
        assert np.array_equal(fresh[name], committed[split][name][indices]), name


def test_split_sizes(committed):
    assert {s: len(d["pixels"]) for s, d in committed.items()} == {s: n for s, (n, _) in shapes.SPLITS.items()}
    assert len(committed["train"]["pixels"]) >= 20000
    assert committed["train"]["pixels"].shape[1:] == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) == (48, 48)


def pairs_of(objects):
    """Per image: the set of (colour, shape) names of its objects."""
    return [{(shapes.COLOURS[o[1]], shapes.SHAPES[o[0]]) for o in objs if o[0] != shapes.NO_OBJECT} for objs in objects]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_held_out_pairs_never_appear_in_seen_splits(committed, split):
    seen = set().union(*pairs_of(committed[split]["objects"]))
    assert not seen & set(shapes.HELD_OUT)
    if split == "train":  # every shape and every colour still appears in training
        assert {s for _, s in seen} == set(shapes.SHAPES)
        assert {c for c, _ in seen} == set(shapes.COLOURS)


def test_every_test_comp_image_has_a_held_out_pair(committed):
    assert all(pairs & set(shapes.HELD_OUT) for pairs in pairs_of(committed["test_comp"]["objects"]))


def test_classes_split_is_25_single_objects_per_pair(committed):
    objects = committed["classes"]["objects"]
    assert (objects[:, 1:, 0] == shapes.NO_OBJECT).all() and (objects[:, 0, 0] != shapes.NO_OBJECT).all()
    counts = {}
    for pairs in pairs_of(objects):
        (pair,) = pairs
        counts[pair] = counts.get(pair, 0) + 1
    assert counts == {pair: 25 for pair in shapes.PAIRS}


def test_scenes_have_one_to_three_objects_in_distinct_cells(committed):
    objects = committed["val"]["objects"]
    n = (objects[:, :, 0] != shapes.NO_OBJECT).sum(1)
    assert set(n.tolist()) == {1, 2, 3}
    for objs, k in zip(objects, n):
        cells = [3 * int(o[3]) + int(o[4]) for o in objs[:k]]
        assert len(set(cells)) == k and cells == sorted(cells)  # distinct, in raster order


def test_rendered_colours_are_exactly_the_objects_colours(committed):
    data = committed["test"]
    for pixels, objs in zip(data["pixels"][:200], data["objects"][:200]):
        drawn = set(np.unique(pixels).tolist()) - {0}
        assert drawn == {1 + int(o[1]) for o in objs if o[0] != shapes.NO_OBJECT}


def test_canonical_caption_parses_back_to_the_ground_truth(committed):
    positions = {w: (r, c) for r, row in enumerate(shapes.POSITIONS) for c, w in enumerate(row)}
    phrase = re.compile(r"an? (small|large) (\w+) (\w+) (?:at|on|in) the (top left|top right|top|"
                        r"bottom left|bottom right|bottom|left|right|center)")  # fmt: skip
    data = committed["test_comp"]
    for caption, objs in zip(data["captions"][:, 0], data["objects"]):
        parsed = [(shapes.SHAPES.index(s), shapes.COLOURS.index(c), shapes.SIZES.index(z), *positions[p])
                  for z, c, s, p in phrase.findall(str(caption))]  # fmt: skip
        assert parsed == [tuple(int(v) for v in o) for o in objs if o[0] != shapes.NO_OBJECT]


def test_shape_masks_worked_example():
    dy, dx = np.ogrid[-2:3, -2:3]  # a 5 x 5 window around the centre
    diamond = shapes.shape_mask("diamond", 2, dy, dx).astype(int)
    assert diamond.tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    triangle = shapes.shape_mask("triangle", 2, dy, dx).astype(int)
    assert triangle.tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_every_object_stays_inside_its_own_cell_at_any_jitter():
    # never clipped by the border, never touching a neighbour: inside the cell, whose first row
    # and column stay empty
    for shape in range(len(shapes.SHAPES)):
        for size in range(len(shapes.SIZES)):
            for row, col in [(0, 0), (2, 2)]:
                for jy in range(-shapes.JITTER, shapes.JITTER + 1):
                    for jx in range(-shapes.JITTER, shapes.JITTER + 1):
                        objects = np.full((3, 5), shapes.NO_OBJECT, dtype=np.int8)
                        objects[0] = [shape, 0, size, row, col]
                        jitter = np.array([[jy, jx], [0, 0], [0, 0]], dtype=np.int8)
                        ys, xs = np.nonzero(shapes.render(objects, jitter))
                        r = shapes.RADIUS[shapes.SIZES[size]]
                        cy, cx = shapes.CELL_CENTRES[row] + jy, shapes.CELL_CENTRES[col] + jx
                        full = shapes.shape_mask(shapes.SHAPES[shape], r, *np.mgrid[-r : r + 1, -r : r + 1]).sum()
                        assert len(ys) == full  # nothing clipped
                        top, left = row * shapes.CELL, col * shapes.CELL
                        assert top + 1 <= ys.min() and ys.max() <= top + shapes.CELL - 1
                        assert left + 1 <= xs.min() and xs.max() <= left + shapes.CELL - 1


def test_grid_cells_are_blocks_of_the_tiny_models_patches():
    from coca_min import PRESETS

    patch = PRESETS["tiny"].patch_size
    assert 3 * shapes.CELL == shapes.IMAGE_SIZE and shapes.CELL % patch == 0
    assert all(c % patch == 0 and c == (i + 0.5) * shapes.CELL for i, c in enumerate(shapes.CELL_CENTRES))


def test_png_export_is_a_manifest_that_reads_back_the_same_images(tmp_path):
    from coca_min.data.datasets import TinyShapes
    from coca_min.data.image_files import CaptionManifest

    assert shapes.save_png_folder(TINY_DATA / "test.npz", tmp_path, 5) == 5
    test = TinyShapes("test", limit=5)
    files = CaptionManifest(tmp_path / "captions.jsonl", tmp_path, test.tokenizer, image_size=48)
    assert files.captions == test.captions  # every caption of each image, in order
    for i in range(5):  # PNG is lossless and 48 px needs no resizing: the very same pixels
        assert torch.equal(normalize(files.load(i)), test.images([i])[0])  # load: uint8
