"""Find the exercise regions of a source file, check their markers, and blank them.

A region starts at a line `# BEGIN EXERCISE <id>` and ends at the next `# END EXERCISE`, both
at the indentation of the statements they enclose, inside one function body (after its
docstring, which the student keeps with the signature). Blanking replaces the code between the
markers by `raise NotImplementedError("exercise <id>: see lessons/…")` at their indentation;
`splice` puts one region of another version of the file (a student's) into a file.
Every malformed marker is an error that names the file and line: a region left open, an END
without a BEGIN, a region inside another, one outside a function body or across two of them,
markers at different indentations, an id used twice or unknown to the catalogue.
"""

import ast
import re
from dataclasses import dataclass

BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN EXERCISE(?:\s+(?P<id>\S+))?\s*$")
END = re.compile(r"^(?P<indent>\s*)# END EXERCISE\s*$")
MARKER = re.compile(r"^\s*#\s*(BEGIN|END)\s*EXERCISE", re.IGNORECASE)  # anything that looks like one


class MarkerError(ValueError):
    """A malformed exercise marker; the message names the file and line."""


@dataclass(frozen=True)
class Region:
    id: str
    begin: int  # 1-based line numbers of the two marker lines
    end: int
    indent: str
    function: str  # the enclosing function's qualified name, e.g. "Attention.forward"


def _functions(tree):
    """(qualified name, first line a region may start on, last line, indentation of `def`) of
    every function, outer before inner."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                first = child.body[0]
                has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
                start = first.end_lineno + 1 if has_docstring else child.lineno + 1  # the student keeps the docstring
                found.append((name, start, child.end_lineno, child.col_offset))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def find_regions(text: str, path="<source>", known_ids=None) -> list[Region]:
    """The exercise regions of one file's text, in order; MarkerError for a malformed one."""
    lines = text.splitlines()
    try:
        functions = _functions(ast.parse(text, filename=str(path)))
    except SyntaxError as error:
        raise MarkerError(f"{path}: not Python ({error.msg}, line {error.lineno})") from None
    regions, open_begin, seen = [], None, {}
    for number, line in enumerate(lines, start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin is None and end is None and MARKER.match(line):
            raise MarkerError(f"{path}:{number}: not an exercise marker: {line.strip()!r} "
                              "(expected '# BEGIN EXERCISE <id>' or '# END EXERCISE')")  # fmt: skip
        if begin:
            if open_begin is not None:
                raise MarkerError(f"{path}:{number}: exercise {begin['id']!r} begins inside exercise "
                                  f"{open_begin[1]!r} (line {open_begin[0]}): regions cannot nest")  # fmt: skip
            if not begin["id"]:
                raise MarkerError(f"{path}:{number}: '# BEGIN EXERCISE' needs an id")
            if begin["id"] in seen:
                raise MarkerError(f"{path}:{number}: exercise {begin['id']!r} is marked twice (also line {seen[begin['id']]})")
            if known_ids is not None and begin["id"] not in known_ids:
                raise MarkerError(f"{path}:{number}: exercise {begin['id']!r} is not in the catalogue "
                                  "(coca_min/coursework/exercises.py)")  # fmt: skip
            open_begin = (number, begin["id"], begin["indent"])
            seen[begin["id"]] = number
        elif end:
            if open_begin is None:
                raise MarkerError(f"{path}:{number}: '# END EXERCISE' without a '# BEGIN EXERCISE' before it")
            start, exercise, indent = open_begin
            if end["indent"] != indent:
                raise MarkerError(f"{path}:{number}: the END of exercise {exercise!r} is not at the "
                                  f"indentation of its BEGIN (line {start})")  # fmt: skip
            body = [line for line in lines[start : number - 1] if line.strip() and not line.lstrip().startswith("#")]
            if not body:
                raise MarkerError(f"{path}:{start}: exercise {exercise!r} holds no code")
            if any(len(line) - len(line.lstrip()) < len(indent) for line in body):
                raise MarkerError(f"{path}:{start}: exercise {exercise!r} has code left of its markers' indentation")
            inside = [name for name, first, last, depth in functions if first <= start <= last and depth < len(indent)]
            if not inside:
                raise MarkerError(f"{path}:{start}: exercise {exercise!r} is not inside one function body")
            regions.append(Region(exercise, start, number, indent, inside[-1]))
            open_begin = None
    if open_begin is not None:
        raise MarkerError(f"{path}:{open_begin[0]}: exercise {open_begin[1]!r} has no '# END EXERCISE'")
    return regions


def blank(text: str, regions, message) -> str:
    """`text` with the code of each region replaced by a stub that raises
    NotImplementedError(message(region)). The markers stay, around the stub: the student writes
    the solution between them, and the grader finds it there. The result must still be Python."""
    lines = text.splitlines(keepends=True)
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):
        stub = f"{region.indent}raise NotImplementedError({message(region)!r})\n"
        lines[region.begin : region.end - 1] = [stub]
    out = "".join(lines)
    try:
        ast.parse(out)
    except SyntaxError as error:
        raise MarkerError(f"blanking {[r.id for r in regions]} leaves code that is not Python "
                          f"({error.msg}, line {error.lineno}): a region must hold whole statements")  # fmt: skip
    return out


def _region(text: str, exercise_id: str, path) -> Region:
    """The markers of one exercise, found by their lines alone: a student's file may not even
    parse (a syntax error inside one exercise must cost that exercise only)."""
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        begin = BEGIN.match(line)
        if begin and begin["id"] == exercise_id:
            for end_number in range(number + 1, len(lines) + 1):
                if END.match(lines[end_number - 1]):
                    return Region(exercise_id, number, end_number, begin["indent"], "")
                if BEGIN.match(lines[end_number - 1]):
                    break
            raise MarkerError(f"{path}:{number}: exercise {exercise_id!r} has no '# END EXERCISE' before the next region")
    raise MarkerError(f"{path}: no '# BEGIN EXERCISE {exercise_id}' … '# END EXERCISE' (were the markers removed?)")


def region_text(text: str, exercise_id: str, path="<source>") -> str:
    """The lines strictly between the markers of `exercise_id` in `text`."""
    region = _region(text, exercise_id, path)
    return "".join(text.splitlines(keepends=True)[region.begin : region.end - 1])


def splice(text: str, exercise_id: str, code: str, path="<source>") -> str:
    """`text` with the code between the markers of `exercise_id` replaced by `code`."""
    region, lines = _region(text, exercise_id, path), text.splitlines(keepends=True)
    lines[region.begin : region.end - 1] = [code]
    return "".join(lines)
