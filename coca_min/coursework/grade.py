"""The grader: the reference tests, run against a student's coca_min, one exercise at a time.

For each exercise the grader assembles a copy of the repository in which only that exercise
comes from the student:

    coca_min/   the student's package, with every *other* exercise's region replaced by the
                reference solution (so a wrong attention mask costs the attention exercise,
                not the ViT, the decoder and captioning as well)
    tests/      the reference tests (the student's copies of them are never used), and the
                instructor's hidden tests under tests/hidden/
    the rest    the reference repository's files (tiny_data/, train.py, ...)

and runs each of the exercise's tests there in its own process with a time limit, so a crash,
an endless loop or an import error costs that exercise only. A plugin in that process
(`plugin.py`) checks that coca_min was imported from the copy and nothing from the reference
package. An exercise earns its points only when all of its tests pass. The tests draw their
random inputs from COCA_MIN_GRADE_SEED, which the grader sets (a new seed for every grading
unless one is given), so answers hard-coded from the visible tests do not pass.
"""

import ast
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from .exercises import EXERCISES
from .markers import MarkerError, region_text, splice
from .runner import Runner, TestResult
from .student import ROOT, repository_files

PLUGIN = "_coca_min_grader"  # the plugin's module name inside each copy


def _copy_tree(source: Path, target: Path):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)


def missing_region(student: Path, exercise_id: str) -> str | None:
    """Why the student's copy has no region of this exercise to grade, or None."""
    file = student / EXERCISES[exercise_id].file
    if not file.is_file():
        return f"{EXERCISES[exercise_id].file} is missing from the student's copy"
    try:
        region_text(file.read_text(encoding="utf-8", errors="replace"), exercise_id, file)
    except MarkerError as error:
        return str(error)
    return None


def assemble(target: Path, student: Path, graded: str | None, hidden: Path | None, root: Path = ROOT) -> list[str]:
    """Write the copy in which only exercise `graded` (None: none) comes from the student.
    Returns notes: exercises whose reference solution could not be put in."""
    for name in repository_files(root):
        if name.parts[0] not in ("coca_min", "tests"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, target / name)
    _copy_tree(student / "coca_min", target / "coca_min")
    _copy_tree(root / "tests", target / "tests")
    if hidden is not None:
        _copy_tree(hidden, target / "tests" / "hidden")
    shutil.copy2(Path(__file__).with_name("plugin.py"), target / f"{PLUGIN}.py")
    notes = []
    for exercise_id, exercise in EXERCISES.items():
        if exercise_id == graded:
            continue
        file = target / exercise.file
        reference = region_text((root / exercise.file).read_text(encoding="utf-8"), exercise_id, exercise.file)
        try:
            file.write_text(splice(file.read_text(encoding="utf-8"), exercise_id, reference, exercise.file), encoding="utf-8")
        except (MarkerError, OSError) as error:
            notes.append(f"{exercise_id}: the reference solution could not be put in ({error})")
    graded_file = EXERCISES[graded].file if graded else None
    for path in sorted((target / "coca_min").rglob("*.py")):
        name = path.relative_to(target).as_posix()
        try:
            ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError as error:  # outside every region but the graded one: the student's file is broken
            if name != graded_file:
                try:  # the line in the student's own file (the copy's lines move with the solutions put in)
                    ast.parse((student / name).read_text(encoding="utf-8", errors="replace"))
                except SyntaxError as own:
                    error = own
                notes.append(f"the student's {name} does not parse outside the exercises (line {error.lineno}: "
                             f"{error.msg}): every test that imports it fails")  # fmt: skip
    return notes


def hidden_tests(hidden: Path, workdir: Path, timeout: float, root: Path = ROOT) -> dict[str, list[str]]:
    """{exercise id: [node ids]} of the instructor's tests in `hidden`, each marked
    `@pytest.mark.grades("<id>")`. Each must pass on the reference solutions."""
    if not hidden.is_dir():
        raise ValueError(f"--hidden {hidden}: no such folder")
    if not any(hidden.rglob("test_*.py")):
        raise ValueError(f"--hidden {hidden}: no test_*.py files in that folder")
    copy = workdir / "reference"
    assemble(copy, root, None, hidden, root)  # every exercise the reference's
    marks_file = copy / "hidden_marks.json"
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", COCA_MIN_GRADE_COLLECT=str(marks_file))
    collected = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", PLUGIN,
                                "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(copy), "tests/hidden"],
                               cwd=copy, env=env, capture_output=True, text=True)  # fmt: skip
    if collected.returncode != 0 or not marks_file.is_file():
        errors = [line[1:].strip() for line in collected.stdout.splitlines() if line.startswith("E ")]
        places = [line for line in errors if line.startswith("File ")]
        said = " / ".join((places[:1] + errors[-1:]) or ["(no message)"])
        said = said.replace(str(copy / "tests" / "hidden"), str(hidden))  # the instructor's paths
        raise ValueError(f"--hidden {hidden}: pytest could not collect the hidden tests: {said}")
    by_exercise = {}
    for node, ids in json.loads(marks_file.read_text()).items():
        if not ids:
            raise ValueError(f"hidden test {node} names no exercise: mark it @pytest.mark.grades(\"<id>\")")
        for exercise_id in ids:
            if exercise_id not in EXERCISES:
                raise ValueError(f"hidden test {node} grades {exercise_id!r}, not in the catalogue: {', '.join(EXERCISES)}")
            by_exercise.setdefault(exercise_id, []).append(node)
    runner = Runner(workdir)
    checks = [runner.run(copy, node, 0, timeout, root) for node in sorted({n for nodes in by_exercise.values() for n in nodes})]
    runner.close()
    for check in checks:
        if check.outcome != "passed":
            test = check.test.replace("tests/hidden/", f"{hidden}/", 1)
            raise ValueError(f"hidden test {test} does not pass on the reference solutions: {check.message}")
    return by_exercise


def first_failure(result: TestResult) -> str:
    """ "test_name[case]: message", the case said once."""
    name = result.test.split("::")[-1]
    case = name[name.index("[") :] if "[" in name else None
    return f"{name}: {result.message.removeprefix(case + ' ') if case else result.message}"


def grade(student, hidden=None, out=None, seed=None, timeout=120.0, jobs=None, only=None, root=ROOT,
          progress=True) -> dict:  # fmt: skip
    """Grade the student's repository copy `student`. -> the report (also written to `out`)."""
    student, root = Path(student).resolve(), Path(root).resolve()
    if not (student / "coca_min" / "__init__.py").is_file():
        raise ValueError(f"{student} holds no coca_min package (expected {student / 'coca_min' / '__init__.py'})")
    if student == root:
        raise ValueError(f"{student} is the reference repository itself: give the student's copy")
    chosen = list(EXERCISES) if not only else list(only)
    unknown = [i for i in chosen if i not in EXERCISES]
    if unknown:
        raise ValueError(f"no exercise {', '.join(map(repr, unknown))} in the catalogue; the exercises are: {', '.join(EXERCISES)}")
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coca_min_grade_") as workdir:
        workdir = Path(workdir)
        extra = hidden_tests(Path(hidden).resolve(), workdir, timeout, root) if hidden else {}
        work, results, notes = [], {}, {}
        for exercise_id in chosen:
            tests = list(EXERCISES[exercise_id].tests) + extra.get(exercise_id, [])
            why = missing_region(student, exercise_id)
            if why:  # no region to grade: every test fails with the reason
                results[exercise_id] = [TestResult(t, "error", why, 0.0) for t in tests]
                continue
            copy = workdir / exercise_id
            notes[exercise_id] = assemble(copy, student, exercise_id, Path(hidden).resolve() if hidden else None, root)
            work += [(exercise_id, copy, test) for test in tests]
        bar = tqdm(total=len(work), desc="grading", unit="test", disable=None if progress else True)  # None: not in a log
        todo = queue.Queue()
        for item in work:
            todo.put(item)

        def worker():  # one runner process per job, taking the next test until none is left
            runner = Runner(workdir, threads=max(1, (os.cpu_count() or 1) // jobs))
            try:
                while True:
                    try:
                        exercise_id, copy, test = todo.get_nowait()
                    except queue.Empty:
                        return
                    graded[exercise_id, test] = runner.run(copy, test, seed, timeout, root)
                    bar.update()
            finally:
                runner.close()

        graded = {}
        threads = [threading.Thread(target=worker) for _ in range(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bar.close()
        for exercise_id, _, test in work:
            results.setdefault(exercise_id, []).append(graded[exercise_id, test])
    report = {"student": str(student), "reference": str(root), "seed": seed, "timeout_s": timeout, "exercises": {}, "total": 0,
              "max": sum(EXERCISES[i].points for i in chosen)}  # fmt: skip
    for exercise_id in chosen:
        tests = results[exercise_id]
        failures = [t for t in tests if t.outcome != "passed"]
        points = EXERCISES[exercise_id].points if not failures else 0
        report["exercises"][exercise_id] = {
            "lesson": EXERCISES[exercise_id].lesson,
            "points": points,
            "max_points": EXERCISES[exercise_id].points,
            "passed": len(tests) - len(failures),
            "failed": len(failures),
            "first_failure": first_failure(failures[0]) if failures else "",
            "notes": notes.get(exercise_id, []),
            "tests": [vars(t) for t in tests],
        }
        report["total"] += points
    report["seconds"] = round(time.perf_counter() - start, 1)
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def table(report) -> str:
    """The report as a plain-text table, one row per exercise, then the total."""
    rows = [("exercise", "passed", "failed", "points", "first failure")]
    for exercise_id, r in report["exercises"].items():
        failure = r["first_failure"]
        rows.append((exercise_id, str(r["passed"]), str(r["failed"]), f"{r['points']}/{r['max_points']}",
                     failure if len(failure) <= 90 else failure[:87] + "..."))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"total {report['total']}/{report['max']} points (seed {report['seed']}, {report['seconds']:.0f} s)")
    lines.append(f"graded with the tests and reference solutions of {report['reference']}")
    return "\n".join(line.rstrip() for line in lines)
