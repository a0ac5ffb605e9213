"""Coursework markers and catalogue: every exercise is marked once where the catalogue says,
its tests exist, blanking leaves Python with no solution in it, and a malformed marker is an
error that names the file and line."""

import ast
from pathlib import Path

import pytest

from coca_min.coursework.exercises import EXERCISES
from coca_min.coursework.markers import MarkerError, blank, find_regions

ROOT = Path(__file__).resolve().parents[1]


def message(region):
    return f"exercise {region.id}: see {EXERCISES[region.id].lesson}"


def regions_in(path):
    return find_regions((ROOT / path).read_text(), path, EXERCISES)


def test_the_catalogue_and_the_markers_in_the_code_agree():
    marked = {}
    for path in sorted((ROOT / "coca_min").rglob("*.py")):
        if "coursework" in path.parts:  # the tooling, whose docstrings show a marker
            continue
        for region in regions_in(path.relative_to(ROOT).as_posix()):
            assert region.id not in marked, f"{region.id} marked in two files"
            marked[region.id] = (path.relative_to(ROOT).as_posix(), region.function)
    assert marked == {id: (e.file, e.function) for id, e in EXERCISES.items()}
    assert len(EXERCISES) >= 12


def test_each_exercise_names_its_lesson_points_and_tests_that_exist():
    for id, exercise in EXERCISES.items():
        assert (ROOT / exercise.lesson).is_file(), (id, exercise.lesson)
        assert exercise.points > 0 and 10 <= exercise.minutes <= 60 and exercise.tests, id
        for node in exercise.tests:
            file, name = node.split("::")
            tree = ast.parse((ROOT / file).read_text())
            assert name in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}, (id, node)


@pytest.mark.parametrize("path", sorted({e.file for e in EXERCISES.values()}))
def test_blanking_leaves_python_and_nothing_of_the_solution(path):
    text = (ROOT / path).read_text()
    regions = regions_in(path)
    blanked = blank(text, regions, message)
    ast.parse(blanked)
    lines, out = text.splitlines(), blanked.splitlines()
    outside = [line for i, line in enumerate(lines, 1) if not any(r.begin <= i <= r.end for r in regions)]
    for region in regions:
        assert f"raise NotImplementedError({message(region)!r})" in blanked
        for line in lines[region.begin : region.end - 1]:  # the solution's lines
            if line.strip():  # none is left, unless the same line is also outside every region
                assert out.count(line) <= outside.count(line), (region.id, line)
    assert "EXERCISE" not in blanked.replace("NotImplementedError('exercise", "")


def test_a_blanked_function_raises_and_names_its_exercise_and_lesson():
    blanked = blank((ROOT / "coca_min/metrics.py").read_text(), regions_in("coca_min/metrics.py"), message)
    namespace = {"__name__": "student_metrics"}
    exec(compile(blanked, "student_metrics.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"exercise bleu: see lessons/09_evaluation.ipynb"):
        namespace["bleu"](["a red circle"], [["a red circle"]])
    assert namespace["caption_words"]("A red circle.") == ["a", "red", "circle"]  # unmarked code stays


GOOD = """def f(x):
    '''Doc.'''
    # BEGIN EXERCISE ex
    y = x + 1
    return y
    # END EXERCISE
"""

MALFORMED = {
    "unterminated": (GOOD.replace("    # END EXERCISE\n", ""), r"3: exercise 'ex' has no '# END EXERCISE'"),
    "end without begin": (GOOD.replace("    # BEGIN EXERCISE ex\n", ""), r"5: '# END EXERCISE' without"),
    "nested": (GOOD.replace("    y = x + 1\n", "    # BEGIN EXERCISE other\n    y = x + 1\n"), r"4: exercise 'other' begins inside exercise 'ex'"),
    "outside a function": ("# BEGIN EXERCISE ex\nx = 1\n# END EXERCISE\n", r"1: exercise 'ex' is not inside one function body"),
    "over the docstring": (GOOD.replace("    '''Doc.'''\n    # BEGIN EXERCISE ex\n", "    # BEGIN EXERCISE ex\n    '''Doc.'''\n"),
                           r"2: exercise 'ex' is not inside one function body"),
    "unknown id": (GOOD.replace("EXERCISE ex", "EXERCISE mystery"), r"3: exercise 'mystery' is not in the catalogue"),
    "twice": (GOOD + GOOD.replace("def f", "def g"), r"9: exercise 'ex' is marked twice \(also line 3\)"),
    "other indentation": (GOOD.replace("    # END EXERCISE", "  # END EXERCISE"), r"6: the END of exercise 'ex' is not at the indentation"),
    "no id": (GOOD.replace("EXERCISE ex", "EXERCISE"), r"3: '# BEGIN EXERCISE' needs an id"),
    "misspelt": (GOOD.replace("# BEGIN EXERCISE ex", "# BEGIN EXERCISES ex"), r"3: not an exercise marker"),
    "empty": ("def f():\n    # BEGIN EXERCISE ex\n    # END EXERCISE\n    return 1\n", r"2: exercise 'ex' holds no code"),
}


def test_good_markers_give_their_region():
    (region,) = find_regions(GOOD, "ex.py", {"ex"})
    assert (region.id, region.begin, region.end, region.indent, region.function) == ("ex", 3, 6, "    ", "f")
    assert blank(GOOD, [region], lambda r: "exercise ex").endswith("    raise NotImplementedError('exercise ex')\n")


@pytest.mark.parametrize("case", MALFORMED, ids=lambda case: case.replace(" ", "_"))
def test_a_malformed_marker_is_an_error_naming_the_file_and_line(case):
    text, expected = MALFORMED[case]
    with pytest.raises(MarkerError, match=r"^ex\.py:" + expected):
        find_regions(text, "ex.py", {"ex", "other"})
