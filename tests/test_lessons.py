"""lessons/build.py: the percent format, outputs, figures, cells meant to raise, determinism,
--check; and the committed notebooks against their sources."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lessons"))
import build  # noqa: E402  (lessons/build.py)

EXAMPLE = '''# %% [markdown]
# # A lesson
# Some *prose*, with maths $a = b$.

# %%
import matplotlib.pyplot as plt
import torch

x = torch.arange(6).view(2, 3)
print("shape", tuple(x.shape))
x.sum().item()

# %%
fig, ax = plt.subplots()
ax.plot([0, 1], [1, 0])
ax.set(title="a line", xlabel="x", ylabel="y");

# %% tags=["raises-exception"]
x.view(4, 4)

# %%
from pathlib import Path
print(Path.cwd().name, object())
'''


def write_lesson(tmp_path, text=EXAMPLE, name="00_example"):
    (tmp_path / "src").mkdir(exist_ok=True)
    path = tmp_path / "src" / f"{name}.py"
    path.write_text(text)
    return path


def test_parse_splits_cells_and_uncomments_markdown():
    cells = build.parse(EXAMPLE)
    assert [kind for kind, _, _ in cells] == ["markdown", "code", "code", "code", "code"]
    assert cells[0][1] == "# A lesson\nSome *prose*, with maths $a = b$."
    assert cells[3][2] == ["raises-exception"] and cells[1][2] == []
    with pytest.raises(build.BuildError, match=r"line 1: a cell marker must be"):
        build.parse("# %%markdown\nx = 1\n")


def test_a_build_has_the_outputs_a_kernel_would_show(tmp_path):
    notebook = nbformat.reads(build.build(write_lesson(tmp_path)), as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == [1, 2, 3, 4]
    first = code[0].outputs
    assert first[0]["name"] == "stdout" and first[0]["text"] == "shape (2, 3)\n"
    assert first[1]["output_type"] == "execute_result" and first[1]["data"]["text/plain"] == "15"
    figure = code[1].outputs  # `;` hides the last value; the open figure is shown as a PNG
    assert [o["output_type"] for o in figure] == ["display_data"] and len(figure[0]["data"]["image/png"]) > 1000
    error = code[2].outputs[-1]
    assert error["output_type"] == "error" and error["ename"] == "RuntimeError"
    assert code[3].outputs[0]["text"].startswith(tmp_path.name + " <object object>")  # run in the lesson's folder, no address


def test_building_twice_gives_the_same_bytes(tmp_path):
    path = write_lesson(tmp_path)
    assert build.build(path) == build.build(path)


def test_no_path_of_this_machine_in_the_outputs(tmp_path):
    path = write_lesson(tmp_path, "# %%\nimport coca_min\nprint(coca_min.__file__)\n")
    text = build.build(path)
    assert str(ROOT) not in text and "coca_min/__init__.py" in text


def test_an_unmarked_error_fails_the_build_and_a_marked_cell_must_raise(tmp_path):
    with pytest.raises(build.BuildError, match=r"00_example: code cell 2 raised ZeroDivisionError"):
        build.build(write_lesson(tmp_path, "# %%\nx = 1\n\n# %%\n1 / 0\n"))
    with pytest.raises(build.BuildError, match=r"code cell 1 is marked 'raises-exception' but did not raise"):
        build.build(write_lesson(tmp_path, '# %% tags=["raises-exception"]\nx = 1\n'))


def test_check_names_a_notebook_out_of_date(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "LESSONS", tmp_path)
    write_lesson(tmp_path, "# %%\nprint(1)\n")
    build.main([])
    build.main(["--check"])  # just built: up to date
    assert "up to date" in capsys.readouterr().out
    write_lesson(tmp_path, "# %%\nprint(2)\n")
    with pytest.raises(SystemExit, match=r"out of date with their sources .*00_example\.ipynb"):
        build.main(["--check"])
    with pytest.raises(SystemExit, match=r"no lesson source numbered 07"):
        build.main(["07"])


def test_check_compares_a_measured_cells_code_but_not_its_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "LESSONS", tmp_path)
    timed = '# %%\nimport time\n\n# %% tags=["measured"]\nprint(time.perf_counter_ns())\n\n# %%\nprint(open("x").read())\n'
    write_lesson(tmp_path, timed)
    (tmp_path / "x").write_text("1")  # the last cell's output, read from the lessons folder
    build.main([])
    build.main(["--check"])  # a new time is printed, and that is not a difference
    assert "up to date" in capsys.readouterr().out
    committed = (tmp_path / "00_example.ipynb").read_bytes()
    build.main([])  # nor a reason to rewrite the notebook
    printed = capsys.readouterr().out
    assert printed.startswith("unchanged ") and printed.rstrip().endswith("00_example.ipynb"), printed
    assert (tmp_path / "00_example.ipynb").read_bytes() == committed
    write_lesson(tmp_path, timed.replace("perf_counter_ns()", "perf_counter_ns() + 1"))
    with pytest.raises(SystemExit, match=r"out of date"):  # the measured cell's code is still compared
        build.main(["--check"])
    write_lesson(tmp_path, timed)
    build.main(["--check"])
    (tmp_path / "x").write_text("2")
    with pytest.raises(SystemExit, match=r"out of date"):  # every other cell's outputs are compared
        build.main(["--check"])
    with pytest.raises(build.BuildError, match=r"tags may be 'raises-exception', 'measured' and 'approximate'; got \["):
        build.parse('# %% tags=["slow"]\nx = 1\n')


def test_check_allows_another_machines_round_off_and_figure_bytes_but_nothing_else(tmp_path):
    # another CPU or torch prints 1.3e-15 for 1.8e-15, 4.464648 for 4.464649, and matplotlib
    # another PNG: a notebook is up to date with its source if only that differs
    source = '# %%\nimport matplotlib.pyplot as plt\nprint("largest difference 1.8e-15; loss 4.464649")\nplt.plot([0, 1]);\n'
    committed = build.build(write_lesson(tmp_path, source))
    figure = nbformat.reads(committed, as_version=4).cells[0].outputs[1].data["image/png"]

    def rebuilt(text=None, png=None):
        notebook = nbformat.reads(committed, as_version=4)
        outputs = notebook.cells[0].outputs
        outputs[0].text = text or outputs[0].text
        outputs[1].data["image/png"] = png or outputs[1].data["image/png"]
        return nbformat.writes(notebook)

    assert build.up_to_date(committed, rebuilt("largest difference 1.3e-15; loss 4.464648\n", png=figure[::-1]))
    assert not build.up_to_date(committed, rebuilt("largest difference 1.8e-15; loss 4.52\n"))  # over 1 %
    assert not build.up_to_date(committed, rebuilt("largest difference 1.8e-03; loss 4.464649\n"))  # over 1e-6
    assert not build.up_to_date(committed, rebuilt("largest gap 1.8e-15; loss 4.464649\n"))  # other words
    no_figure = nbformat.reads(committed, as_version=4)
    no_figure.cells[0].outputs.pop()
    assert not build.up_to_date(committed, nbformat.writes(no_figure))
    # a cell tagged "approximate" (a short SGD run) may move by 0.05 or 10 %, not more
    loose = nbformat.reads(committed, as_version=4)
    loose.cells[0].metadata["tags"] = ["approximate"]
    committed = nbformat.writes(loose)
    assert build.up_to_date(committed, rebuilt("largest difference 0.03; loss 4.8\n"))
    assert not build.up_to_date(committed, rebuilt("largest difference 0.06; loss 4.464649\n"))


def test_every_lesson_source_has_its_committed_notebook_and_the_other_way_round():
    sources = {p.stem for p in (ROOT / "lessons" / "src").glob("[0-9][0-9]_*.py")}
    notebooks = {p.stem for p in (ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")}
    assert sources == notebooks
    for name in notebooks:
        text = (ROOT / "lessons" / f"{name}.ipynb").read_text()
        assert len(text.encode()) < 1_000_000 and str(ROOT) not in text, name
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
        counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), name
        for cell in notebook.cells:
            if cell.cell_type == "code" and "raises-exception" not in cell.metadata.get("tags", []):
                assert not any(o["output_type"] == "error" for o in cell.outputs), (name, cell.id)


@pytest.mark.lessons  # a run of its own (README, .ci/run): python -m pytest -q -m lessons
@pytest.mark.parametrize("source", sorted((ROOT / "lessons" / "src").glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_each_lesson_runs_in_a_fresh_process_and_its_notebook_is_up_to_date(source, tmp_path):
    # a new interpreter started elsewhere: nothing of this test session (imports, seeds, the
    # working directory) can make a lesson pass. build.py --check runs every cell (so every
    # check cell) and compares the result with the committed notebook (numbers to a tolerance)
    command = [sys.executable, str(ROOT / "lessons" / "build.py"), "--check", source.name[:2]]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)  # a bound, not a speed test
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-3000:]
    assert "up to date" in result.stdout


def test_a_build_does_not_depend_on_the_callers_folder_or_warning_filters(tmp_path, monkeypatch):
    # a library's DeprecationWarning is not shown, as in a kernel; pytest's own filters show it
    source = "# %%\nexec(compile('import warnings; warnings.warn(\"old\", DeprecationWarning)', 'somelib', 'exec'), {'__name__': 'somelib'})\n"
    path = write_lesson(tmp_path, source)
    expected = build.build(path)
    monkeypatch.chdir(path.parent)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert build.build(Path(path.name)) == expected  # a relative path, other filters: the same notebook
    assert nbformat.reads(expected, as_version=4).cells[0].outputs == []  # no warning shown


# what lessons/assets/tiny_coca.pt scores on the first 300 test images (lessons/README.md)
CHECKPOINT_FIGURES = {"image_to_text_R@1": 0.997, "text_to_image_R@1": 0.936, "object_F1": 0.901, "exact_match": 0.857}
MARGIN = 0.03


def test_the_lessons_checkpoint_loads_safely_and_still_scores_what_its_readme_says():
    import torch

    from coca_min.checkpoint import load_checkpoint
    from coca_min.data.datasets import TinyShapes
    from coca_min.eval.evaluate import evaluate_captions, evaluate_retrieval

    path = ROOT / "lessons" / "assets" / "tiny_coca.pt"
    assert path.stat().st_size <= 4_000_000
    raw = torch.load(path, weights_only=True)  # plain data only
    assert all(w.dtype == torch.float16 for w in raw["model"].values() if w.is_floating_point())
    saved = load_checkpoint(path)
    test = TinyShapes("test", saved["tokenizer"], limit=300)
    scores = {**evaluate_retrieval(saved["model"], test, ks=(1,)), **evaluate_captions(saved["model"], test)[0]}
    retrain = ("a change to the model code no longer fits lessons/assets/tiny_coca.pt: retrain it with the two "
               "commands in lessons/README.md, rebuild the lessons and update the figures there and here")  # fmt: skip
    for name, expected in CHECKPOINT_FIGURES.items():
        assert scores[name] >= expected - MARGIN, f"{name} {scores[name]:.3f} < {expected} - {MARGIN}: {retrain}"
