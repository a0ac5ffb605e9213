"""Build the lesson notebooks from their plain-Python sources, with outputs, using nbformat only.

    python lessons/build.py              # build every lessons/src/NN_topic.py -> lessons/NN_topic.ipynb
    python lessons/build.py 02 03        # only these lessons
    python lessons/build.py --check      # rebuild in memory; exit 1 naming each notebook out of date

A source is in the "percent" format that jupytext reads: `# %% [markdown]` starts a markdown
cell (its lines are comments, `# ` removed), `# %%` a code cell, and `# %% tags=["raises-exception"]`
a code cell that is meant to raise (its error is kept as the cell's output; any other error
fails the build), and `# %% tags=["measured"]` a cell whose outputs are wall-clock measurements
(they differ from run to run, so --check compares that cell's code but not its outputs).
--check compares the rest on what is stable from machine to machine: code and markdown
exactly, printed numbers to a tolerance (round-off differs between CPUs and torch versions:
1 % or 1e-6; in a cell tagged `# %% tags=["approximate"]`, whose numbers come out of many small
random steps that grow the round-off, 10 % or 0.05), figures by being there (their PNG bytes
depend on matplotlib and fonts). A notebook that a new
build matches in that sense is left as it is. Cells run in order in
one namespace per lesson, with the lessons folder as
the working directory, matplotlib on its non-interactive Agg backend and progress bars off.
Outputs: what the cell prints, the value of its last expression (unless the line ends in `;`),
and every figure it leaves open, as PNG. Cell ids and execution counts are fixed, memory
addresses and this machine's paths are taken out, so building twice gives the same bytes.

Not a part of coca_min and not of the paper: the tool that keeps the course and the library one
thing (every lesson checks its from-scratch code against coca_min's).
"""

import argparse
import ast
import base64
import contextlib
import io
import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

import nbformat

LESSONS = Path(__file__).resolve().parent
ROOT = LESSONS.parent
CELL = re.compile(r"^# %%(?P<markdown> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<Line2D at 0x7f3a…>": differs from run to run
RAISES = "raises-exception"  # the tag Jupyter and nbconvert use for a cell meant to raise
MEASURED = "measured"  # a cell that times something: its outputs are not compared by --check
APPROXIMATE = "approximate"  # a cell whose numbers come from many small random steps: compared loosely


class BuildError(Exception):
    """A cell that raised without being marked to, or a source that cannot be read."""


def parse(source: str, name="lesson"):
    """Percent-format text -> [(kind "markdown"/"code", text, tags)]. Text before the first
    marker is a code cell if it is not blank."""
    cells, kind, tags, lines = [], "code", [], []

    def close():
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
        if text.strip():
            cells.append((kind, text, tags))

    for number, line in enumerate(source.splitlines(), start=1):
        marker = CELL.match(line)
        if marker is None:
            if line.startswith("# %%"):
                raise BuildError(f"{name} line {number}: a cell marker must be `# %%`, `# %% [markdown]` or "
                                 f'`# %% tags=["{RAISES}"]` or `# %% tags=["{MEASURED}"]`; got {line!r}')  # fmt: skip
            lines.append(line)
            continue
        close()
        kind = "markdown" if marker["markdown"] else "code"
        tags = json.loads(marker["tags"]) if marker["tags"] else []
        if not isinstance(tags, list) or set(tags) - {RAISES, MEASURED, APPROXIMATE}:
            raise BuildError(f"{name} line {number}: a cell's tags may be {RAISES!r}, {MEASURED!r} and {APPROXIMATE!r}; "
                             f"got {marker['tags']}")  # fmt: skip
        lines = []
    close()
    return cells


def run_cell(code: str, namespace: dict, label: str):
    """Execute one cell in `namespace`. -> (outputs as nbformat dicts, the error or None)."""
    import matplotlib.pyplot as plt

    outputs, stdout, stderr, error = [], io.StringIO(), io.StringIO(), None
    tree = ast.parse(code, filename=label)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            exec(compile(tree, label, "exec"), namespace)
            value = eval(compile(ast.Expression(last.value), label, "eval"), namespace) if last else None
        except Exception as raised:  # noqa: BLE001 - every error is reported, below
            error, value = raised, None
    for name, text in [("stdout", stdout.getvalue()), ("stderr", stderr.getvalue())]:
        if text:
            outputs.append(nbformat.v4.new_output("stream", name=name, text=clean(text)))
    shown = value is not None and not code.rstrip().endswith(";")
    if shown and not isinstance(value, plt.Figure):  # a figure is shown below, as every open one
        outputs.append(nbformat.v4.new_output("execute_result", data={"text/plain": clean(repr(value))}))
    for number in plt.get_fignums():  # the figures the cell drew, as the inline backend shows them
        figure, png = plt.figure(number), io.BytesIO()
        figure.savefig(png, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
        outputs.append(nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(png.getvalue()).decode(),
                                                                    "text/plain": "<Figure>"}))  # fmt: skip
    plt.close("all")
    if error is not None:
        lines = [clean(line.rstrip("\n")) for line in traceback.format_exception_only(type(error), error)]
        outputs.append(nbformat.v4.new_output("error", ename=type(error).__name__, evalue=clean(str(error)), traceback=lines))
    return outputs, error


def clean(text: str) -> str:
    """No memory addresses and no paths of this machine in an output."""
    return ADDRESS.sub("", text.replace(str(ROOT) + os.sep, "").replace(str(ROOT), "."))


@contextlib.contextmanager
def lesson_session(folder: Path):
    """As a notebook kernel started in `folder` would run: that working directory, no progress
    bars (carriage returns in the outputs), warnings as one line without this machine's paths.
    Everything is put back afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    cwd, tqdm_setting = os.getcwd(), os.environ.get("TQDM_DISABLE")
    os.chdir(folder)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with warnings.catch_warnings():  # puts showwarning and the filters back on leaving
            warnings.resetwarnings()  # Python's own filters, whatever the caller's (pytest shows more)
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")  # plt.show() on Agg
            warnings.showwarning = lambda message, category, *rest, **kw: print(f"{category.__name__}: {message}", file=sys.stderr)
            yield
    finally:
        os.chdir(cwd)
        if tqdm_setting is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_setting


def build(source_path: Path) -> str:
    """A lesson source -> its notebook as text, with outputs. Raises BuildError for a cell that
    raised without being marked to."""
    source_path = Path(source_path).resolve()  # before the working directory changes
    name = source_path.stem
    cells, namespace, count = [], {"__name__": "__main__"}, 0
    with lesson_session(source_path.parent.parent):  # lessons/, as a notebook opened there
        for number, (kind, text, tags) in enumerate(parse(source_path.read_text(encoding="utf-8"), name), start=1):
            cell_id = f"{name}-{number:02d}"
            if kind == "markdown":
                cells.append(nbformat.v4.new_markdown_cell(text, id=cell_id))
                continue
            count += 1
            outputs, error = run_cell(text, namespace, f"<{name} cell {number}>")
            if error is not None and RAISES not in tags:
                where = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-3:])
                raise BuildError(f"{name}: code cell {number} raised {type(error).__name__}: {error}\n{clean(where)}")
            if error is None and RAISES in tags:
                raise BuildError(f"{name}: code cell {number} is marked {RAISES!r} but did not raise")
            metadata = {"tags": tags} if tags else {}
            cells.append(nbformat.v4.new_code_cell(text, id=cell_id, execution_count=count, outputs=outputs, metadata=metadata))
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})  # fmt: skip
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
RTOL, ATOL = 1e-2, 1e-6  # how far a printed number may move: round-off of other CPUs and torch versions
LOOSE_RTOL, LOOSE_ATOL = 0.1, 0.05  # in an "approximate" cell: a short SGD run, round-off grown over its steps


def same_text(a: str, b: str, rtol=RTOL, atol=ATOL) -> bool:
    """Two outputs alike: the same text between the numbers, and each number within `rtol` of the
    other or `atol` of it (a largest difference of 1.8e-15 on one CPU is 1.3e-15 on another)."""
    if NUMBER.split(a) != NUMBER.split(b):
        return False
    return all(abs(float(x) - float(y)) <= atol + rtol * abs(float(y)) for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)))


def same_output(a, b, rtol=RTOL, atol=ATOL) -> bool:
    """Two outputs of a cell alike: the same kind; text by `same_text`; a figure where the other
    has one (its PNG bytes depend on the matplotlib version and the fonts, so they are not compared)."""
    if a.output_type != b.output_type:
        return False
    if a.output_type == "stream":
        return a.name == b.name and same_text(a.text, b.text, rtol, atol)
    if a.output_type == "error":
        return a.ename == b.ename and same_text(a.evalue, b.evalue, rtol, atol)
    if set(a.get("data", {})) != set(b.get("data", {})):
        return False
    return "image/png" in a.data or same_text(a.data.get("text/plain", ""), b.data.get("text/plain", ""), rtol, atol)


def up_to_date(committed: str, built: str) -> bool:
    """A committed notebook against a new build of its source, for --check: the same cells with
    the same code and markdown, and alike outputs (`same_output`), except a measured cell's,
    whose outputs are timings and not compared."""
    old, new = nbformat.reads(committed, as_version=4).cells, nbformat.reads(built, as_version=4).cells

    def shape(cells):
        return [(cell.cell_type, cell.source, cell.metadata.get("tags", [])) for cell in cells]

    if shape(old) != shape(new):
        return False
    for a, b in zip(old, new):
        tags = a.metadata.get("tags", [])
        if a.cell_type == "code" and MEASURED not in tags:
            rtol, atol = (LOOSE_RTOL, LOOSE_ATOL) if APPROXIMATE in tags else (RTOL, ATOL)
            if len(a.outputs) != len(b.outputs) or not all(same_output(x, y, rtol, atol) for x, y in zip(a.outputs, b.outputs)):
                return False
    return True


def sources(numbers=()):
    """The lesson sources lessons/src/NN_*.py, all or those whose number is in `numbers`."""
    found = sorted((LESSONS / "src").glob("[0-9][0-9]_*.py"))
    chosen = [path for path in found if not numbers or path.name[:2] in numbers]
    missing = set(numbers) - {path.name[:2] for path in found}
    if missing:
        raise BuildError(f"no lesson source numbered {', '.join(sorted(missing))} in {LESSONS / 'src'}")
    return chosen


def main(argv=None):
    p = argparse.ArgumentParser(prog="lessons/build.py", description=__doc__.split("\n")[0])
    p.add_argument("numbers", nargs="*", help="two-digit lesson numbers (default: all)")
    p.add_argument("--check", action="store_true", help="exit 1 if a committed notebook differs from its source's build")
    args = p.parse_args(argv)
    try:
        stale = []
        for source in sources(args.numbers):
            notebook = LESSONS / f"{source.stem}.ipynb"
            text = build(source)
            current = notebook.is_file() and up_to_date(notebook.read_text(encoding="utf-8"), text)
            if args.check:
                if not current:
                    stale.append(notebook.name)
            elif current:  # kept as it is: only new timings would differ (a commit without noise)
                print(f"unchanged {os.path.relpath(notebook)}")
            else:
                notebook.write_text(text, encoding="utf-8")
                print(f"built {os.path.relpath(notebook)}")
    except BuildError as error:
        sys.exit(f"error: {error}")
    if stale:
        sys.exit(f"out of date with their sources (run python lessons/build.py): {', '.join(stale)}")
    if args.check:
        print("every notebook is up to date with its source")


if __name__ == "__main__":
    main()
