"""The grader graded: a student copy graded untouched, with the solutions put back, and with
wrong solutions, including ones that loop forever, crash their process or do not parse.

These run every exercise's tests in their own processes (a few minutes on two cores), so they
are their own run, as the lessons are: `python -m pytest -q -m coursework`.
"""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from coca_min.coursework.exercises import EXERCISES
from coca_min.coursework.grade import grade, table
from coca_min.coursework.markers import region_text, splice
from coca_min.coursework.student import make_student

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234  # fixed here so that a failure can be rerun; the grader's default is a new seed


def reference_code(exercise_id):
    e = EXERCISES[exercise_id]
    return region_text((ROOT / e.file).read_text(), exercise_id, e.file)


def put(student, exercise_id, code):
    """Write `code` between the exercise's markers in the student's copy."""
    path = student / EXERCISES[exercise_id].file
    path.write_text(splice(path.read_text(), exercise_id, code, path))


def replaced(exercise_id, old, new):
    code = reference_code(exercise_id)
    assert code.count(old) == 1, f"{exercise_id}: {old!r} is not in its reference solution once"
    return code.replace(old, new)


def endless(exercise_id):
    code = reference_code(exercise_id)
    indent = code[: len(code) - len(code.lstrip())]
    return f"{indent}while True:  # never ends\n{indent}    pass\n{code}"


# plausibly wrong solutions, each a small edit of the reference one
WRONG = {
    "contrastive_loss": lambda: replaced("contrastive_loss", "return loss_i2t + loss_t2i", "return loss_i2t"),
    "text_mask": lambda: replaced("text_mask", ".tril()", ".tril(diagonal=1)"),  # each token sees the next one
    "bleu": lambda: replaced("bleu", "return [s * brevity for s in scores]", "return scores"),  # no brevity penalty
    "beam_search": lambda: replaced("beam_search", "candidates[:, eos_id] / (i + 1) ** length_penalty",
                                    "candidates[:, eos_id]"),  # no length normalisation  # fmt: skip
    "cls_token": lambda: replaced("cls_token", "x = torch.cat([x, cls], dim=1)", "x = torch.cat([cls, x], dim=1)"),  # [CLS] first
    "caption_loss": lambda: replaced("caption_loss", "return total / n_real", "return total / n_real)"),  # not Python
    "bpe_merge": lambda: replaced("bpe_merge", "out, i = [], 0", "import os; os._exit(3)"),  # the process dies
}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The student version with every exercise blanked (made once; tests copy it)."""
    dest = tmp_path_factory.mktemp("student") / "copy"
    make_student(dest)
    return dest


def copy_of(student, tmp_path):
    target = tmp_path / "student"
    shutil.copytree(student, target)
    return target


def points(report):
    return {exercise_id: r["points"] for exercise_id, r in report["exercises"].items()}


@pytest.mark.coursework
def test_untouched_copy_gets_zero_and_the_solutions_put_back_full_marks(student, tmp_path):
    untouched = grade(student, seed=SEED, progress=False)
    print(table(untouched))
    assert untouched["total"] == 0 and untouched["max"] == sum(e.points for e in EXERCISES.values())
    for exercise_id, result in untouched["exercises"].items():
        assert result["passed"] == 0 and result["failed"] == len(EXERCISES[exercise_id].tests)
        assert f"NotImplementedError: exercise {exercise_id}: see lessons/" in result["first_failure"]
    solved = copy_of(student, tmp_path)
    for exercise_id in EXERCISES:
        put(solved, exercise_id, reference_code(exercise_id))
    full = grade(solved, seed=SEED, progress=False)
    print(table(full))
    assert full["total"] == full["max"], table(full)


@pytest.mark.coursework
def test_each_wrong_solution_loses_its_own_points_and_no_others(student, tmp_path):
    copy = copy_of(student, tmp_path)
    for exercise_id in EXERCISES:
        put(copy, exercise_id, WRONG[exercise_id]() if exercise_id in WRONG else reference_code(exercise_id))
    report = grade(copy, seed=SEED, progress=False)
    print(table(report))
    assert points(report) == {i: 0 if i in WRONG else e.points for i, e in EXERCISES.items()}, table(report)
    outcomes = {i: {t["outcome"] for t in r["tests"]} for i, r in report["exercises"].items()}
    assert outcomes["bpe_merge"] == {"crashed"}  # os._exit: no result, the process's code said
    # losses.py does not parse: its test files do not collect, test_exercises' test cannot import it
    assert outcomes["caption_loss"] == {"error", "failed"}
    assert all("SyntaxError" in t["message"] for t in report["exercises"]["caption_loss"]["tests"])


@pytest.mark.coursework
def test_an_endless_loop_is_stopped_at_the_time_limit(student, tmp_path):
    copy = copy_of(student, tmp_path)
    put(copy, "retrieval_rank", endless("retrieval_rank"))
    report = grade(copy, seed=SEED, timeout=5, only=["retrieval_rank", "bleu"], progress=False)
    looping = report["exercises"]["retrieval_rank"]
    assert looping["points"] == 0 and {t["outcome"] for t in looping["tests"]} == {"timeout"}
    assert report["exercises"]["bleu"]["points"] == 0  # still blank: graded as usual
    assert all(t["message"] == "still running after 5 s: stopped" for t in looping["tests"])


@pytest.mark.coursework
def test_hidden_tests_are_added_to_their_exercise_and_checked_on_the_reference(student, tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "test_extra.py").write_text(
        "import pytest\nfrom coca_min.eval.metrics import bleu\n\n"
        "@pytest.mark.grades('bleu')\ndef test_a_perfect_caption():\n"
        "    assert bleu(['a red circle'], [['a red circle']], n_max=1)[0] == pytest.approx(1.0)\n"
    )  # fmt: skip
    copy = copy_of(student, tmp_path)
    put(copy, "bleu", reference_code("bleu"))
    report = grade(copy, hidden=hidden, seed=SEED, only=["bleu"], progress=False)
    names = [t["test"] for t in report["exercises"]["bleu"]["tests"]]
    assert "tests/hidden/test_extra.py::test_a_perfect_caption" in names and report["total"] == 10
    (hidden / "test_extra.py").write_text("def test_unmarked():\n    pass\n")
    with pytest.raises(ValueError, match=r"test_unmarked names no exercise: mark it @pytest.mark.grades"):
        grade(copy, hidden=hidden, seed=SEED, only=["bleu"], progress=False)
    (hidden / "test_extra.py").write_text("def test_broken(:\n")
    with pytest.raises(ValueError, match=rf"could not collect the hidden tests: File \"{hidden}/test_extra.py\", line 1 / SyntaxError"):
        grade(copy, hidden=hidden, seed=SEED, only=["bleu"], progress=False)
    (hidden / "test_extra.py").write_text("import pytest\n\n@pytest.mark.grades('bleu')\ndef test_wrong():\n    assert 1 == 2\n")
    with pytest.raises(ValueError, match=r"test_wrong does not pass on the reference solutions"):
        grade(copy, hidden=hidden, seed=SEED, only=["bleu"], progress=False)


@pytest.mark.coursework
def test_in_the_plain_student_copy_only_the_blanked_exercises_tests_fail(tmp_path):
    blanked = ["text_mask", "contrastive_loss", "bleu"]
    copy = tmp_path / "student"
    make_student(copy, blanked)
    files = ["tests/test_layers.py", "tests/test_losses.py", "tests/test_metrics.py", "tests/test_exercises.py"]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", "r.xml", *files],
                   cwd=copy, capture_output=True, env={**__import__("os").environ, "PYTHONPATH": str(copy)})  # fmt: skip
    failed, skipped, passed = set(), {}, set()
    for case in ET.parse(copy / "r.xml").iter("testcase"):
        node = f"{case.get('file') or case.get('classname').replace('.', '/') + '.py'}::{case.get('name').split('[')[0]}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(node)
        elif case.find("skipped") is not None:
            skipped[node] = case.find("skipped").get("message")
        else:
            passed.add(node)
    grading = {t.split("[")[0] for i in blanked for t in EXERCISES[i].tests if t.split("::")[0] in files}
    assert failed == grading
    assert passed and all("waits for exercise" in reason for reason in skipped.values()), skipped


@pytest.mark.coursework
def test_a_file_broken_outside_the_exercises_costs_the_exercises_that_import_it(student, tmp_path):
    copy = copy_of(student, tmp_path)
    for exercise_id in ["bpe_merge", "cider_d"]:
        put(copy, exercise_id, reference_code(exercise_id))
    metrics = copy / "coca_min" / "eval" / "metrics.py"
    text = metrics.read_text()
    assert text.count("def caption_words(text: str) -> list[str]:") == 1
    metrics.write_text(text.replace("def caption_words(text: str) -> list[str]:", "def caption_words(text: str) -> list[str]"))
    line = text[: text.index("def caption_words")].count("\n") + 1
    report = grade(copy, seed=SEED, only=["bpe_merge", "cider_d"], progress=False)
    assert points(report) == {"bpe_merge": 5, "cider_d": 0}
    assert "SyntaxError: expected ':' (coca_min/eval/metrics.py, line" in report["exercises"]["cider_d"]["first_failure"]
    assert report["exercises"]["bpe_merge"]["notes"] == [
        f"the student's coca_min/eval/metrics.py does not parse outside the exercises (line {line}: expected ':'): "
        "every test that imports it fails"]  # fmt: skip
