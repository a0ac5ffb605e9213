"""Shared fixtures: small configs and a helper that makes right-padded token batches."""

import functools
import os
import re
from pathlib import Path

import pytest
import torch

from coca_min import PRESETS, CoCa, CoCaConfig


def make_tokens(lengths, total_length, vocab_size, generator=None, pad_id=0, bos_id=1, eos_id=2):
    """Right-padded texts `[BOS] w… [EOS] [PAD]…`; `lengths` counts BOS and EOS. -> (B, T) long."""
    tokens = torch.full((len(lengths), total_length), pad_id, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0] = bos_id
        tokens[i, 1 : n - 1] = torch.randint(3, vocab_size, (n - 2,), generator=generator)
        tokens[i, n - 1] = eos_id
    return tokens


@pytest.fixture
def micro_config():
    """A model small enough for a full float64 gradcheck: 8x8 px images, width 8."""
    return CoCaConfig(
        image_size=8, patch_size=4, vision_width=8, vision_layers=1, vision_heads=2, vision_mlp=16,
        n_caption_queries=3, pooler_heads=2, vocab_size=16, context_length=6,
        text_width=8, text_heads=2, n_uni=1, n_multi=1, text_mlp=16, embed_dim=8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny-preset model (seed 0), in eval mode."""
    torch.manual_seed(0)
    return CoCa(PRESETS["tiny"]).eval()


@pytest.fixture
def grade_seed():
    """The seed of the randomised exercise tests: COCA_MIN_GRADE_SEED, which the coursework
    grader sets anew for every grading; 0 in a plain test run."""
    return int(os.environ.get("COCA_MIN_GRADE_SEED", "0"))


# --- in a student copy (python -m coca_min.coursework make-student) ----------------------------
# A blanked exercise raises NotImplementedError("exercise <id>: see lessons/…"). A test that
# grades that exercise fails, as it should; any other test that fails only because it reaches
# a blank (the ViT's test needs attention) is reported as skipped, naming the exercise it waits
# for, so a student's run shows their own exercises' failures and nothing else. In the
# reference code there are no blanks, and under the grader (COCA_MIN_GRADING) nothing changes.
STUB = re.compile(r"exercise (\w+): see lessons/")


@functools.cache
def blanked_exercises() -> frozenset:
    """The exercises whose region in this checkout is the student version's stub."""
    from coca_min.coursework.exercises import EXERCISES
    from coca_min.coursework.markers import MarkerError, region_text

    root, found = Path(__file__).resolve().parents[1], set()
    for exercise_id, e in EXERCISES.items():
        try:
            code = region_text((root / e.file).read_text(encoding="utf-8"), exercise_id, e.file).strip()
        except (OSError, MarkerError):
            continue
        if code.startswith("raise NotImplementedError(") and f"exercise {exercise_id}:" in code:
            found.add(exercise_id)
    return frozenset(found)


def _graded_by(nodeid):
    from coca_min.coursework.exercises import EXERCISES

    test = nodeid.split("[")[0]  # a catalogue entry may name one case of a parametrised test
    return {exercise_id for exercise_id, e in EXERCISES.items() if test in {t.split("[")[0] for t in e.tests}}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None and not os.environ.get("COCA_MIN_GRADING"):
        waiting = set(STUB.findall(report.longreprtext))
        if waiting and waiting <= blanked_exercises() and not waiting & _graded_by(item.nodeid):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"waits for exercise {', '.join(sorted(waiting))}")
