"""moving_shapes.py: clips regenerate alone, stay inside the frame, move as their captions say,
and the motion distribution is symmetric under time reversal (left reversed is right)."""

import types

import numpy as np
import pytest
import torch

from coca_min.data import datasets as data
from coca_min.data.synthetic import moving_shapes as ms
from coca_min.data.synthetic import shapes

LEFT, RIGHT, UP, DOWN, GROWING, SHRINKING = range(6)
assert ms.MOTIONS[LEFT] == "moving left" and ms.MOTIONS[SHRINKING] == "shrinking"


@pytest.fixture(scope="module")
def clips():
    """motion -> 1200 clips of train with that motion (sample_clip only, no rendering)."""
    by_motion = {m: [] for m in range(6)}
    for index in range(6 * 1200):
        clip = ms.sample_clip("train", index)
        by_motion[clip["motion"]].append(clip)
    return by_motion


@pytest.fixture(scope="module")
def batch():
    return ms.make_clips("test", 240)


def same_clip(a, b):
    return all(a[k] == b[k] for k in ["shape", "colour", "motion"]) and np.array_equal(a["track"], b["track"])


def test_clips_are_deterministic_and_regenerate_alone():
    assert same_clip(ms.sample_clip("train", 5), ms.sample_clip("train", 5))
    batch = ms.make_clips("val", 10)
    for index in [0, 7, 9]:
        clip = ms.sample_clip("val", index)
        assert np.array_equal(batch["frames"][index], ms.render_clip(clip))
        assert batch["captions"][index] == ms.clip_caption(clip)
        assert batch["labels"][index].tolist() == [clip["shape"], clip["colour"], clip["motion"]]
    assert not all(same_clip(ms.sample_clip("train", i), ms.sample_clip("val", i)) for i in range(10))
    assert batch["frames"].shape == (10, ms.FRAMES, 48, 48) and batch["frames"].dtype == np.uint8
    assert batch["labels"].dtype == np.int64 and ms.FRAMES == 8 and ms.SPEED == 3


def test_every_shape_stays_whole_inside_the_frame_with_a_margin(clips, batch):
    for motion, motion_clips in clips.items():
        tracks = np.stack([c["track"] for c in motion_clips])  # (N, FRAMES, 3)
        for axis in [0, 1]:  # the margin, and all of the range used, on both axes of every motion
            centre, r = tracks[..., axis], tracks[..., 2]
            assert (centre - r).min() == 1 and (centre + r).max() == 46, (motion, axis)
    frames = batch["frames"]
    for edge in [frames[:, :, 0], frames[:, :, -1], frames[:, :, :, 0], frames[:, :, :, -1]]:
        assert not edge.any()
    for clip, clip_frames in zip(map(ms.sample_clip, ["test"] * 240, range(240)), frames):
        assert set(np.unique(clip_frames)) == {0, 1 + clip["colour"]}
        for frame, (_, _, radius) in zip(clip_frames, clip["track"]):  # as many pixels as unclipped
            d = np.arange(-radius - 1, radius + 2)
            whole = shapes.shape_mask(shapes.SHAPES[clip["shape"]], int(radius), d[:, None], d[None, :]).sum()
            assert (frame > 0).sum() == whole


def test_motions_are_exactly_balanced_and_pairs_are_seen(batch):
    assert np.bincount(batch["labels"][:, 2], minlength=6).tolist() == [40] * 6
    pairs = {(shapes.COLOURS[c], shapes.SHAPES[s]) for s, c, _ in batch["labels"]}
    assert pairs <= set(shapes.SEEN) and len(pairs) >= 28


@pytest.mark.parametrize("motion, axis, step", [(LEFT, 1, -3), (RIGHT, 1, 3), (UP, 0, -3), (DOWN, 0, 3)])
def test_moves_go_speed_pixels_per_frame_in_their_direction(clips, motion, axis, step):
    for clip in clips[motion][:200]:
        track = clip["track"]
        assert (np.diff(track[:, axis]) == step).all()
        assert (np.diff(track[:, [1 - axis, 2]], axis=0) == 0).all()  # the other coordinate and radius stay
    assert {int(c["track"][0, 2]) for c in clips[motion]} == set(shapes.RADIUS.values())
    frames = ms.render_clip(clips[motion][0])
    for before, after in zip(frames, frames[1:]):  # the picture itself shifts by SPEED px
        assert np.array_equal(np.roll(before, step, axis=axis), after)


def test_growing_and_shrinking_change_only_the_radius(clips):
    assert ms.GROWTH == [3, 4, 4, 5, 5, 6, 6, 7]
    for motion, radii in [(GROWING, ms.GROWTH), (SHRINKING, ms.GROWTH[::-1])]:
        for clip in clips[motion][:200]:
            assert clip["track"][:, 2].tolist() == radii
            assert (clip["track"][:, :2] == clip["track"][0, :2]).all()
    sizes = (ms.render_clip(clips[GROWING][0]) > 0).sum(axis=(1, 2))
    assert (np.diff(sizes) >= 0).all() and sizes[-1] > sizes[0]


def is_track_of(motion, track):
    """Whether `motion`'s sampler can produce `track` (its support, written out independently)."""
    axis, step = {RIGHT: (1, 3), LEFT: (1, -3), DOWN: (0, 3), UP: (0, -3)}[motion]
    r = track[0, 2]
    return (r in shapes.RADIUS.values() and (np.diff(track[:, axis]) == step).all()
            and (np.diff(track[:, [1 - axis, 2]], axis=0) == 0).all()
            and track[:, :2].min() - r >= 1 and track[:, :2].max() + r <= 46)  # fmt: skip


def marginals(tracks):
    """Per track: radius, first frame's centre y and x (which fix the whole track of a move)."""
    return [tuple(t[0].tolist()) for t in tracks]


@pytest.mark.parametrize("motion, reverse", [(LEFT, RIGHT), (RIGHT, LEFT), (UP, DOWN), (DOWN, UP)])
def test_a_move_played_backwards_is_its_reverse_with_the_same_probability(clips, motion, reverse):
    forward = [c["track"] for c in clips[motion]]
    backward = [c["track"][::-1] for c in clips[reverse]]
    assert all(is_track_of(motion, t) for t in forward) and all(is_track_of(motion, t) for t in backward)
    for column in range(3):  # radius, start y, start x: the same values, at about the same rates
        a = np.array([m[column] for m in marginals(forward)])
        b = np.array([m[column] for m in marginals(backward)])
        assert set(a) == set(b)
        bins = np.arange(min(a.min(), b.min()), max(a.max(), b.max()) + 2)
        pa, pb = (np.histogram(v, bins)[0] / len(v) for v in (a, b))
        assert 0.5 * np.abs(pa - pb).sum() < 0.1  # total variation; a shifted start range gives ~0.3+
        assert abs(a.mean() - b.mean()) < 0.6
    clip = clips[reverse][0]  # and the rendered clip played backwards is that clip's frames
    backwards = dict(clip, motion=motion, track=clip["track"][::-1])
    assert np.array_equal(ms.render_clip(backwards), ms.render_clip(clip)[::-1])


def test_growing_played_backwards_is_shrinking(clips):
    grow = np.stack([c["track"][::-1] for c in clips[GROWING]])
    shrink = np.stack([c["track"] for c in clips[SHRINKING]])
    assert (grow[:, :, 2] == shrink[0, :, 2]).all()  # every reversed growth has the shrinking radii
    for axis in [0, 1]:  # centres: the same range (largest radius fits), about the same rates
        a, b = grow[:, 0, axis], shrink[:, 0, axis]
        assert a.min() == b.min() == 8 and a.max() == b.max() == 39
        assert abs(a.mean() - b.mean()) < 0.8


def test_caption_round_trip_for_every_motion():
    for motion in range(6):
        clip = ms.sample_clip("val", 6 * 3 + motion)
        text = ms.clip_caption(clip)
        assert text.endswith(ms.MOTIONS[motion])
        assert ms.parse_caption(text) == (clip["shape"], clip["colour"], motion)
    orange = {"shape": 1, "colour": 6, "motion": GROWING, "track": None}
    assert ms.clip_caption(orange) == "an orange square growing"
    assert ms.parse_caption("A red circle moving left.") == (0, 0, LEFT)
    assert ms.parse_caption("a red circle") is None
    assert ms.parse_caption("a red circle moving sideways") is None
    assert ms.parse_caption("red moving left") is None


def test_generated_labels_are_what_the_captions_say(batch):
    assert [ms.parse_caption(t) for t in batch["captions"]] == [tuple(l) for l in batch["labels"].tolist()]


def test_to_pixels_matches_tiny_shapes_normalisation(batch):
    frames = batch["frames"][:3]
    pixels = ms.to_pixels(frames)
    assert pixels.shape == (3, ms.FRAMES, 3, 48, 48) and pixels.dtype == torch.float32
    as_images = types.SimpleNamespace(palette=torch.from_numpy(shapes.PALETTE),
                                      pixels=torch.from_numpy(frames.reshape(-1, 48, 48)))  # fmt: skip
    expected = data.TinyShapes.images(as_images, list(range(3 * ms.FRAMES)))
    assert torch.equal(pixels, expected.view(3, ms.FRAMES, 3, 48, 48))
    background = (torch.tensor([16, 16, 24]) / 255 - data.MEAN.flatten()) / data.STD.flatten()
    assert torch.allclose(pixels[0, 0, :, 0, 0], background)


def test_filmstrip_is_a_png_of_one_row_per_clip(batch, tmp_path):
    from PIL import Image

    ms.save_filmstrip(batch, tmp_path / "strip.png", n=3)
    with Image.open(tmp_path / "strip.png") as image:
        assert image.format == "PNG" and image.size == (960, round(100 * (1.45 * 3 + 0.5)))
