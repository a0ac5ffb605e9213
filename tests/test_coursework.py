"""Coursework markers and catalogue: every exercise is marked once where the catalogue says,
its tests exist, blanking leaves Python with no solution in it, and a malformed marker is an
error that names the file and line."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coca_min.coursework.exercises import EXERCISES
from coca_min.coursework.markers import MarkerError, blank, find_regions, region_text, splice
from coca_min.coursework.student import make_student, solution_windows

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
            file, name = node.split("[")[0].split("::")  # [a-b]: one case of a parametrised test
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
    stubs = {r.id: region_text(blanked, r.id) for r in find_regions(blanked, path)}  # the markers stay
    assert stubs == {r.id: f"{r.indent}raise NotImplementedError({message(r)!r})\n" for r in regions}


@pytest.mark.parametrize("path", sorted({e.file for e in EXERCISES.values()}))
def test_splicing_the_reference_solutions_back_gives_the_reference_file(path):
    text = (ROOT / path).read_text()
    regions = regions_in(path)
    restored = blank(text, regions, message)
    for region in regions:
        restored = splice(restored, region.id, region_text(text, region.id), path)
    assert restored == text


def test_a_blanked_function_raises_and_names_its_exercise_and_lesson():
    blanked = blank((ROOT / "coca_min/eval/metrics.py").read_text(), regions_in("coca_min/eval/metrics.py"), message)
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
    assert blank(GOOD, [region], lambda r: "exercise ex").endswith(
        "    # BEGIN EXERCISE ex\n    raise NotImplementedError('exercise ex')\n    # END EXERCISE\n")
    with pytest.raises(MarkerError, match=r"ex\.py: no '# BEGIN EXERCISE other'.*markers removed"):
        region_text(GOOD, "other", "ex.py")


@pytest.mark.parametrize("case", MALFORMED, ids=lambda case: case.replace(" ", "_"))
def test_a_malformed_marker_is_an_error_naming_the_file_and_line(case):
    text, expected = MALFORMED[case]
    with pytest.raises(MarkerError, match=r"^ex\.py:" + expected):
        find_regions(text, "ex.py", {"ex", "other"})


# --- the student version ------------------------------------------------------------------


def test_make_student_blanks_only_the_chosen_exercises_and_the_copy_imports_its_own_package(tmp_path):
    dest = tmp_path / "student"
    done = make_student(dest, only=["bleu", "contrastive_loss"])
    assert done["blanked"] == {"coca_min/eval/metrics.py": ["bleu"], "coca_min/model/losses.py": ["contrastive_loss"]}
    assert not (dest / ".git").exists() and (dest / "lessons" / "06_losses.ipynb").is_file()
    assert not any(part in {"__pycache__", ".venv", "out"} for p in dest.rglob("*") for part in p.relative_to(dest).parts)
    script = """
import coca_min, torch
from coca_min.eval.metrics import bleu, cider_d
from coca_min.model.losses import contrastive_loss, caption_loss
assert coca_min.__file__.startswith(%r), coca_min.__file__
assert cider_d(["a red circle", "a blue cross"], [["a red circle"], ["a blue cross"]]) > 1  # not blanked: works
for call, lesson in [(lambda: bleu(["a"], [["a"]]), "exercise bleu: see lessons/09_evaluation.ipynb"),
                     (lambda: contrastive_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0)), "exercise contrastive_loss: see lessons/06_losses.ipynb")]:
    try:
        call()
    except NotImplementedError as error:
        assert str(error) == lesson, error
    else:
        raise AssertionError("not blanked")
print(contrastive_loss.__doc__.split(":")[0])
""" % str(dest)
    result = subprocess.run([sys.executable, "-c", script], cwd=dest, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(dest), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Paper eq. 1")  # the docstring is the student's


def test_make_student_refuses_a_used_folder_an_unknown_exercise_and_a_folder_inside_the_repository(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        make_student(tmp_path / "used", only=["bleu"])
    with pytest.raises(MarkerError, match=r"no exercise 'blue' in the catalogue; the exercises are: bpe_merge"):
        make_student(tmp_path / "new", only=["blue"])
    with pytest.raises(ValueError, match="inside the repository"):
        make_student(ROOT / "student_copy", only=["bleu"])
    assert not (tmp_path / "new").exists() and not (ROOT / "student_copy").exists()


def test_make_student_refuses_a_copy_that_still_holds_a_solution_and_leaves_nothing(tmp_path):
    root = tmp_path / "repo"  # not a git checkout: every file is copied
    (root / "coca_min" / "eval").mkdir(parents=True)
    metrics = (ROOT / "coca_min" / "eval" / "metrics.py").read_text()
    (root / "coca_min" / "eval" / "metrics.py").write_text(metrics)
    region = next(r for r in find_regions(metrics, "metrics.py", EXERCISES) if r.id == "bleu")
    copied = "".join(metrics.splitlines(keepends=True)[region.begin : region.end - 1])
    (root / "notes.py").write_text("def my_bleu(candidates, references, n_max=4):\n" + copied)
    assert solution_windows(metrics, [region])
    with pytest.raises(MarkerError, match=r"^notes\.py still holds solution code: correct, total"):
        make_student(tmp_path / "student", only=["bleu"], root=root)
    assert not (tmp_path / "student").exists()


def test_the_command_line_writes_the_copy_or_says_what_is_wrong_in_one_line(tmp_path):
    command = [sys.executable, "-m", "coca_min.coursework", "make-student"]
    ok = subprocess.run([*command, str(tmp_path / "s"), "--only", "bpe_merge"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "1 exercise blanked" in ok.stdout and "coca_min/data/tokenizer.py: bpe_merge" in ok.stdout
    assert "note:" not in ok.stdout  # no lesson writes a solution line for line
    bad = subprocess.run([*command, str(tmp_path / "t"), "--only", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("error: no exercise 'nope' in the catalogue")


def test_the_instructors_table_and_each_lessons_exercises_section_name_the_catalogue():
    readme = (ROOT / "coca_min" / "coursework" / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d\d) \| `([\w.]+)` \| `([\w/.]+)` \| (\d+) \| (\d+) \|$", readme, re.M)
    expected = [(i, Path(e.lesson).name[:2], e.function, e.file, str(e.points), str(e.minutes)) for i, e in EXERCISES.items()]
    assert rows == expected
    for source in sorted((ROOT / "lessons" / "src").glob("[0-9][0-9]_*.py")):
        section = re.sub(r"\n# ?", " ", source.read_text().split("## Exercises", 1)[1])  # one line
        named = re.findall(r"`(\w+)` \(`", section.split("**Coursework.**", 1)[1]) if "**Coursework.**" in section else []
        assert named == [i for i, e in EXERCISES.items() if Path(e.lesson).stem == source.stem], source.name


def test_splice_finds_a_region_in_a_student_file_that_does_not_parse():
    broken = "def f():\n    # BEGIN EXERCISE ex\n    return 1)\n    # END EXERCISE\n\n\ndef g(:\n"
    assert region_text(broken, "ex") == "    return 1)\n"
    assert splice(broken, "ex", "    return 1\n").startswith("def f():\n    # BEGIN EXERCISE ex\n    return 1\n    # END")
    with pytest.raises(MarkerError, match=r"no '# END EXERCISE' before the next region"):
        region_text("    # BEGIN EXERCISE ex\n    x = 1\n    # BEGIN EXERCISE other\n", "ex")


def test_the_grader_refuses_what_is_not_a_student_copy_in_one_line(tmp_path):
    from coca_min.coursework.grade import grade

    with pytest.raises(ValueError, match=r"holds no coca_min package"):
        grade(tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"is the reference repository itself"):
        grade(ROOT, progress=False)
    (tmp_path / "coca_min").mkdir()
    (tmp_path / "coca_min" / "__init__.py").write_text("")
    with pytest.raises(ValueError, match=r"no exercise 'blue' in the catalogue"):
        grade(tmp_path, only=["blue"], progress=False)
    command = [sys.executable, "-m", "coca_min.coursework", "grade", str(tmp_path / "nowhere")]
    bad = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'} holds no coca_min package "
                                                                       f"(expected {tmp_path / 'nowhere' / 'coca_min' / '__init__.py'})"]


def test_a_lesson_that_writes_a_solution_line_for_line_is_reported_not_refused(tmp_path):
    root = tmp_path / "repo"  # not a git checkout: every file is copied
    (root / "coca_min" / "data").mkdir(parents=True)
    (root / "lessons" / "src").mkdir(parents=True)
    tokenizer = (ROOT / "coca_min" / "data" / "tokenizer.py").read_text()
    (root / "coca_min" / "data" / "tokenizer.py").write_text(tokenizer)
    solution = region_text(tokenizer, "bpe_merge")
    (root / "lessons" / "src" / "01_tokenizer.py").write_text("def merge(ids, pair, new_id):\n" + solution)
    done = make_student(tmp_path / "student", only=["bpe_merge"], root=root)
    assert list(done["lessons_showing_solutions"]) == ["lessons/src/01_tokenizer.py"]
    assert done["lessons_showing_solutions"]["lessons/src/01_tokenizer.py"].startswith("out, i = [], 0 / while i < len(ids):")
    assert "raise NotImplementedError" in (tmp_path / "student" / "coca_min" / "data" / "tokenizer.py").read_text()


def test_no_lesson_or_other_file_of_the_student_version_holds_a_solution(tmp_path):
    done = make_student(tmp_path / "student")
    assert done["lessons_showing_solutions"] == {}
