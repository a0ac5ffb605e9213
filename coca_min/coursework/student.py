"""The student version: a copy of the repository with chosen exercises blanked.

The files copied are the ones git tracks (or, outside a git checkout, every file but caches,
virtual environments, run outputs and the .git folder), so nothing else of the reference comes
along: no history, no caches, no checkpoints of runs. The code between each selected
exercise's markers becomes `raise NotImplementedError("exercise <id>: see lessons/NN_….ipynb")`;
the markers, the function's signature and its docstring stay, and the student writes the
solution between the markers, where the grader will look for it. Afterwards every text file of the copy (notebooks' cells and outputs too)
is searched for the blanked solutions' code: five consecutive code lines of a solution found
together in the package, the tests or any other file refuse the copy (it is removed). A lesson
that builds the same code from scratch is reported instead, so that an instructor can hand
that lesson out after the exercise.
"""

import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from .exercises import EXERCISES
from .markers import MarkerError, blank, find_regions

ROOT = Path(__file__).resolve().parents[2]  # the repository: coca_min/coursework/ is two below
SKIPPED = {".git", "__pycache__", ".venv", "venv", ".pytest_cache", "out", ".ipynb_checkpoints", ".ci"}


def stub_message(region) -> str:
    return f"exercise {region.id}: see {EXERCISES[region.id].lesson}"


def repository_files(root: Path) -> list[Path]:
    """The files to copy, relative to `root`: git's tracked files, or a walk without caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        names = [Path(name) for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout
        names = [p.relative_to(root) for p in root.rglob("*") if p.is_file()
                 and not SKIPPED & set(p.relative_to(root).parts)]  # fmt: skip
    return [name for name in names if (root / name).is_file()]  # tracked but deleted: skipped


WINDOW = 5  # consecutive code lines of a solution that may not appear together anywhere in the copy


def code_lines(text: str) -> list[str]:
    """A file's code lines, stripped, blank lines and comments left out; a notebook's cells and
    text outputs, line by line."""
    if text.lstrip().startswith("{") and '"cells"' in text:  # a notebook: its cells' text
        try:
            cells = json.loads(text)["cells"]
            parts = ["".join(c.get("source", "")) for c in cells]
            parts += ["".join(o.get("text", "")) for c in cells for o in c.get("outputs", [])]
            text = "\n".join(parts)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def solution_windows(text: str, regions) -> set[tuple]:
    """Every run of WINDOW consecutive code lines inside the regions: what must not leak."""
    lines = text.splitlines()
    windows = set()
    for r in regions:
        code = code_lines("\n".join(lines[r.begin : r.end - 1]))
        windows |= {tuple(code[i : i + WINDOW]) for i in range(len(code) - WINDOW + 1)}
        if 0 < len(code) < WINDOW:
            windows.add(tuple(code))
    return windows


def leaked(text: str, windows) -> tuple | None:
    code = code_lines(text)
    for n in {len(w) for w in windows}:
        for i in range(len(code) - n + 1):
            if tuple(code[i : i + n]) in windows:
                return tuple(code[i : i + n])
    return None


def make_student(dest, only=None, root=ROOT) -> dict:
    """Write the student version to `dest` (a new or empty folder). -> {file: [blanked ids]}."""
    root, dest = Path(root), Path(dest)
    chosen = list(EXERCISES) if not only else list(only)
    unknown = [i for i in chosen if i not in EXERCISES]
    if unknown:
        raise MarkerError(f"no exercise {', '.join(map(repr, unknown))} in the catalogue; the exercises are: {', '.join(EXERCISES)}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder: give a new one")
    if dest.resolve() == root.resolve() or root.resolve() in dest.resolve().parents:
        raise ValueError(f"{dest} is inside the repository {root}: give a folder outside it")
    by_file = defaultdict(list)
    for exercise_id in chosen:
        by_file[EXERCISES[exercise_id].file].append(exercise_id)
    blanked, leaks, shown = {}, set(), {}
    for file, ids in by_file.items():  # check every marker before writing anything
        text = (root / file).read_text(encoding="utf-8")
        regions = [r for r in find_regions(text, file, EXERCISES) if r.id in ids]
        missing = set(ids) - {r.id for r in regions}
        if missing:
            raise MarkerError(f"{file}: no markers for exercise {', '.join(sorted(missing))} (the catalogue says they are here)")
        blanked[file] = blank(text, regions, stub_message)
        leaks |= solution_windows(text, regions)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for name in repository_files(root):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name.as_posix() in blanked:
                target.write_text(blanked[name.as_posix()], encoding="utf-8")
            else:
                shutil.copy2(root / name, target)
        for path in sorted(dest.rglob("*")):  # the blanked code must be nowhere in the copy
            if path.is_file() and path.suffix in (".py", ".ipynb", ".md", ".txt", ".json", ".toml", ""):
                found = leaked(path.read_bytes().decode("utf-8", errors="ignore"), leaks)
                name = path.relative_to(dest).as_posix()
                if found and name.startswith("lessons/"):  # a lesson builds it from scratch: said, not refused
                    shown[name] = " / ".join(found)
                elif found:
                    raise MarkerError(f"{name} still holds solution code: {' / '.join(found)}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # nothing half-made is handed out
        raise
    return {"blanked": {file: sorted(ids) for file, ids in by_file.items()}, "lessons_showing_solutions": shown}
