"""The package's import graph: no circles, and no module imports a layer above its own.

``LAYERS`` is the one written order of the house, lowest first. A module belongs to the
first entry that is its name or a prefix of it; it may import its own layer and the ones
below. Imports inside functions count too: a lazy import is still an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "berter"

LAYERS = (
    "berter",  # the package's __init__ only (its version, no imports): exact match, not a prefix
    "berter.errors",
    "berter.objstore",  # object-store filesystems (s3://, gs://): for checkpoints and results alike
    "berter.registry",
    "berter.tasks",
    "berter.config",
    "berter.metrics",
    "berter.data",
    "berter.model",
    "berter.exits",
    "berter.strategies",
    "berter.variants",
    "berter.train",
    "berter.checkpoint",
    "berter.infer",
    "berter.sweep",
    "berter.report",
    "berter.results",  # the public aggregation for pandas users: the report's own functions
    "berter.cli",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or (prefix != "berter" and module.startswith(prefix + ".")):
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in the file (TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {m: imports_of(p, modules) - {m} for m, p in paths.items()}


def test_every_module_is_placed_in_a_layer():
    for module in graph():
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} ({LAYERS[layer_of(m)]}) imports {t} ({LAYERS[layer_of(t)]})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    edges = graph()
    # package __init__ files only describe their package; an edge into one is not a cycle
    edges = {m: {t for t in ts if not (PACKAGE.parent / t.replace(".", "/")).is_dir()}
             for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The checker itself: a config that imports the sweep is reported."""
    assert layer_of("berter.config") < layer_of("berter.sweep.tuner")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from berter.sweep.tuner import main\n")
    assert imports_of(bad, {"berter.sweep.tuner"}) == {"berter.sweep.tuner"}
