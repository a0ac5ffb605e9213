"""tiny_data/: the committed arrays are exactly what the generator makes, and the splits keep
their promises (held-out colour-shape pairs, counts, one object per class image)."""

import re

import numpy as np
import pytest
import torch

from coca_min.data.datasets import TINY_DATA, normalize
from coca_min.data.synthetic import shapes
from coca_min.data.synthetic.recombine import recombine


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


def _one_object_block(obj, jy, jx):
    """The 16 px cell of one object drawn alone at jitter (jy, jx), as render draws it."""
    alone = np.full((3, 5), shapes.NO_OBJECT, dtype=np.int8)
    alone[0] = [obj[0], obj[1], obj[2], 0, 0]
    return shapes.render(alone, np.array([[jy, jx], [0, 0], [0, 0]]))[: shapes.CELL, : shapes.CELL]


def test_a_recombined_scene_is_a_rendering_of_its_objects_and_never_a_held_out_pair(committed):
    train = committed["train"]
    rng = np.random.default_rng(0)
    moved_cells, new_colours, pairs = 0, 0, set()
    for i in range(300):
        image, objects = recombine(train["pixels"][i], train["objects"][i], rng)
        before = [o for o in train["objects"][i] if o[0] != shapes.NO_OBJECT]
        after = [o for o in objects if o[0] != shapes.NO_OBJECT]
        # the same objects (shape, size), in distinct cells in raster order, each a seen pair
        assert sorted((o[0], o[2]) for o in before) == sorted((o[0], o[2]) for o in after)
        assert [(o[3], o[4]) for o in after] == sorted({(o[3], o[4]) for o in after})
        for o in after:
            assert (shapes.COLOURS[o[1]], shapes.SHAPES[o[0]]) in shapes.SEEN
            pairs.add((o[1], o[0]))
        moved_cells += {(o[3], o[4]) for o in before} != {(o[3], o[4]) for o in after}
        new_colours += sorted(o[1] for o in before) != sorted(o[1] for o in after)
        # the pixels: each object's cell is that object drawn alone at some jitter, the rest empty
        cells = image.reshape(3, shapes.CELL, 3, shapes.CELL).transpose(0, 2, 1, 3)  # (3, 3, 16, 16)
        for o in after:
            block = cells[o[3], o[4]]
            assert any(np.array_equal(block, _one_object_block(o, jy, jx)) for jy in (-1, 0, 1) for jx in (-1, 0, 1))
        occupied = {(int(o[3]), int(o[4])) for o in after}
        assert all(not cells[r, c].any() for r in range(3) for c in range(3) if (r, c) not in occupied)
        # the captions describe the new scene
        assert shapes.parse_caption(shapes.scene_captions(objects, rng)[0]) == [tuple(int(x) for x in o) for o in after]
    assert moved_cells > 250 and new_colours > 200  # it does recombine
    assert len(pairs) == len(shapes.SEEN)  # every seen pair is drawn, no held-out one


def test_training_recombines_each_epoch_and_evaluation_never(committed):
    from coca_min.data.datasets import TinyShapes

    train = TinyShapes("train", train=True, seed=3, limit=64, recombine=True)
    first = train.__getitems__(list(range(8)))
    again = TinyShapes("train", train=True, seed=3, limit=64, recombine=True).__getitems__(list(range(8)))
    for (a, ta), (b, tb) in zip(first, again):  # a function of (seed, epoch, index): the same in any worker
        assert torch.equal(a, b) and torch.equal(ta, tb)
    train.set_epoch(1)
    later = train.__getitems__(list(range(8)))
    assert sum(not torch.equal(a, b) for (a, _), (b, _) in zip(first, later)) >= 6  # a new scene each epoch
    plain = TinyShapes("train", train=True, seed=3, limit=64)
    assert torch.equal(plain.__getitems__([5])[0][0], plain.images([5])[0])
    for split in ["val", "test", "test_comp", "classes"]:  # evaluation sets are never redrawn
        data = TinyShapes(split, limit=8, recombine=True)
        assert torch.equal(torch.stack([x for x, _ in data.__getitems__(list(range(8)))]), data.images(list(range(8))))
