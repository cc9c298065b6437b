"""The package's seams: no import cycle anywhere in src/, and layer-type knowledge in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "regprune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_type_checking(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (never executed)."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(sub) for sub in ast.walk(node)}
    return hidden


def import_graph() -> dict[str, set[str]]:
    """Every regprune module -> the regprune modules it imports (function-level imports too:
    an import moved into a function to break a cycle is still a cycle)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        hidden = _in_type_checking(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_subpackages() -> None:
    edges: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        edges.setdefault(subpackage(module), set())
        edges[subpackage(module)] |= {subpackage(t) for t in targets} - {subpackage(module)}
    for targets in list(edges.values()):
        for target in targets:
            edges.setdefault(target, set())
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layer_package_imports_nothing_above_it() -> None:
    edges = import_graph()
    for module in [m for m in edges if m.startswith("regprune.layers")]:
        above = {t for t in edges[module] if not t.startswith("regprune.layers")}
        assert not above, f"{module} imports {above}"


LAYER_TYPE_CHECK = re.compile(
    r"isinstance\([^)]*?\bnn\.(modules\.\w+\.)?_?"
    r"(Conv|ConvTranspose|Linear|Embedding|BatchNorm|LayerNorm|GroupNorm|NormBase)"
)
"""An isinstance on a layer type: layer knowledge belongs in regprune.layers."""


def test_layer_type_checks_live_in_the_layer_package() -> None:
    offenders = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(("layers/", "models/")):  # models build layers: theirs to know
            continue
        if LAYER_TYPE_CHECK.search(path.read_text()):
            offenders.add(relative)
    assert not offenders, f"layer-type checks outside regprune.layers: {sorted(offenders)}"
