"""The layout's rules, read from the source with `ast` (nothing is imported or run):

- `coca_min/model/` (the paper) imports nothing of coca_min but itself and `coca_min.config`;
- `coca_min/data/` never imports `coca_min/model/` or `coca_min/train/`;
- no import circle anywhere in `coca_min/`, lazy imports inside functions included;
- no module of `coca_min/` is over 300 lines.

Each broken rule is one message that names the file, the line and the import (or the circle).
The last tests plant a circle, a forbidden import and a long file in a copy of the package and
check that the rules catch them.
"""

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "coca_min"
MAX_LINES = 300


def module_name(path: Path, package: Path) -> str:
    """coca_min/model/vit.py -> coca_min.model.vit; coca_min/data/__init__.py -> coca_min.data."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path) -> dict:
    """{module name: its file} of every .py file of the package."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}


def imports(package: Path) -> dict:
    """{module: [(imported module, line)]}: every import of a module of the package, at the top
    or inside a function, relative ones resolved. `from X import name` counts X.name when that is
    a module of the package (`from coca_min.train import distributed`), else X."""
    known = modules(package)
    found = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package this module is in
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for alias in node.names:
                    child = f"{source}.{alias.name}"
                    edges.append((child if child in known else source, node.lineno))
        found[name] = [(target, line) for target, line in edges if target in known and target != name]
    return found


def inside(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def forbidden_imports(package: Path) -> list[str]:
    """Messages for the imports that the two direction rules forbid: a module that is not
    allowed, or one that leads to such a module through its own imports (lazy ones included)."""
    files, graph, problems = modules(package), imports(package), []
    rules = [("coca_min.model", lambda target: inside(target, "coca_min.model") or target == "coca_min.config",
              "coca_min/model/ may import only itself and coca_min.config"),
             ("coca_min.data", lambda target: not inside(target, "coca_min.model") and not inside(target, "coca_min.train"),
              "coca_min/data/ never imports coca_min/model/ or coca_min/train/")]  # fmt: skip

    def leads_to_forbidden(start, allowed):  # the first module outside `allowed` that `start` reaches, or None
        seen, queue = {start}, [start]
        while queue:
            for target, _ in graph[queue.pop(0)]:
                if not allowed(target):
                    return target
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
        return None

    for module, edges in graph.items():
        for part, allowed, rule in rules:
            if inside(module, part):
                for target, line in edges:
                    where = f"{files[module].relative_to(package.parent)}:{line} imports {target}"
                    if not allowed(target):
                        problems.append(f"{where}: {rule}")
                    elif not inside(target, part) and (reached := leads_to_forbidden(target, allowed)):
                        problems.append(f"{where}, which leads to {reached}: {rule}")
    return problems


def circles(package: Path) -> list[str]:
    """One message per group of modules that import each other (a strongly connected
    component), naming one loop through it: 'a -> b -> a', each arrow with its import's line."""
    graph = {module: dict(edges[::-1]) for module, edges in imports(package).items()}  # target -> first line
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:  # node is the root of a component: pop it, down to node
            component = set()
            while node not in component:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1:
                components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    messages = []
    for component in components:  # one loop: from its first module by name, along the first imports by name
        start = min(component)
        path, node = [start], start
        while True:
            node = min(t for t in graph[node] if t in component)
            if node in path:
                loop = path[path.index(node):] + [node]
                break
            path.append(node)
        arrows = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(loop, loop[1:]))
        messages.append(f"import circle: {arrows} -> {loop[-1]}")
    return messages


def long_modules(package: Path) -> list[str]:
    return [f"{path.relative_to(package.parent)} has {n} lines, over {MAX_LINES}"
            for path in modules(package).values() if (n := len(path.read_text().splitlines())) > MAX_LINES]  # fmt: skip


def test_the_model_imports_only_itself_and_the_config_and_data_never_imports_model_or_train():
    assert forbidden_imports(PACKAGE) == []


def test_there_is_no_import_circle_in_the_package():
    assert circles(PACKAGE) == []


def test_no_module_is_over_300_lines():
    assert long_modules(PACKAGE) == []


def test_the_reading_of_imports_resolves_relative_and_module_imports():
    found = {module: {target for target, _ in edges} for module, edges in imports(PACKAGE).items()}
    assert "coca_min.model.layers" in found["coca_min.model.vit"]  # from .layers import Block
    assert "coca_min.train.distributed" in found["coca_min.train.step"]  # from . import distributed as D
    assert "coca_min.data.synthetic.shapes" in found["coca_min.data.synthetic.moving_shapes"]  # from . import shapes
    assert "coca_min.checkpoint" in found["coca_min"]  # a lazy import, inside __getattr__
    assert found["coca_min.model.flops"] == {"coca_min.config"}


@pytest.fixture
def copy(tmp_path):
    """A copy of the package to plant faults in."""
    shutil.copytree(PACKAGE, tmp_path / "coca_min", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "coca_min"


def plant(path: Path, line: str) -> int:
    """Add `line` after the module docstring of `path`; -> its line number."""
    lines = path.read_text().splitlines()
    at = ast.parse(path.read_text()).body[0].end_lineno  # after the docstring
    path.write_text("\n".join(lines[:at] + [line] + lines[at:]) + "\n")
    return at + 1


def test_a_planted_import_of_train_from_the_model_is_named_with_its_file_and_line(copy):
    line = plant(copy / "model" / "vit.py", "from coca_min.train.step import make_optimizer")
    assert forbidden_imports(copy) == [f"coca_min/model/vit.py:{line} imports coca_min.train.step: "
                                       "coca_min/model/ may import only itself and coca_min.config"]  # fmt: skip
    lazy = plant(copy / "model" / "coca.py", "def load():\n    from ..checkpoint import load_model")
    assert f"coca_min/model/coca.py:{lazy + 1} imports coca_min.checkpoint: " in "\n".join(forbidden_imports(copy))


def test_a_planted_import_of_the_model_from_data_is_named_also_through_another_module(copy):
    line = plant(copy / "data" / "loader.py", "from coca_min.model import CoCa")
    assert forbidden_imports(copy) == [f"coca_min/data/loader.py:{line} imports coca_min.model: "
                                       "coca_min/data/ never imports coca_min/model/ or coca_min/train/"]  # fmt: skip
    (copy / "data" / "loader.py").write_text((PACKAGE / "data" / "loader.py").read_text())
    line = plant(copy / "data" / "shards.py", "from coca_min.checkpoint import load_model")  # checkpoint imports the model
    assert forbidden_imports(copy) == [f"coca_min/data/shards.py:{line} imports coca_min.checkpoint, which leads to "
                                       "coca_min.model.coca: coca_min/data/ never imports coca_min/model/ or coca_min/train/"]  # fmt: skip


def test_a_planted_circle_is_named_with_every_import_in_it(copy):
    line = plant(copy / "train" / "state.py", "from . import trainer")  # trainer imports state
    trainer_line = next(n for n, text in enumerate((copy / "train" / "trainer.py").read_text().splitlines(), 1)
                        if text.startswith("from .state import"))  # fmt: skip
    assert circles(copy) == [f"import circle: coca_min.train.state (line {line}) -> coca_min.train.trainer "
                             f"(line {trainer_line}) -> coca_min.train.state"]  # fmt: skip


def test_a_planted_long_module_is_named(copy):
    (copy / "eval" / "long.py").write_text("x = 1\n" * 301)
    assert long_modules(copy) == ["coca_min/eval/long.py has 301 lines, over 300"]


def summary(package: Path = PACKAGE) -> str:
    """The import graph in figures: modules, arrows, floors (a module stands one floor above
    the highest it imports), circles, and the lines of the model sub-package."""
    graph = {module: {target for target, _ in edges} for module, edges in imports(package).items()}
    floors = {}

    def floor(module, path=()):
        if module not in floors:
            floors[module] = 1 + max((floor(t, path + (module,)) for t in graph[module] if t not in path), default=0)
        return floors[module]

    model_lines = sum(len(p.read_text().splitlines()) for m, p in modules(package).items() if inside(m, "coca_min.model"))
    return (f"{len(graph)} modules, {sum(map(len, graph.values()))} arrows, {max(map(floor, graph))} floors, "
            f"{len(circles(package))} circles; coca_min/model/: {model_lines} lines")  # fmt: skip


if __name__ == "__main__":  # python tests/test_layout.py [PACKAGE_FOLDER]: the figures of the import graph
    import sys

    print(summary(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE))
