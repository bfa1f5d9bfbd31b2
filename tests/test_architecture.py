"""The import structure of esp/, ike/ and tunnel/, read from the source with ``ast``.

Every import counts, inside functions too; ``if TYPE_CHECKING:`` blocks are skipped for cycles
(they never run) but not for ike/'s layers. Checked: no import cycle between modules; esp/ imports
neither ike/ nor tunnel/; ike/ imports neither tunnel/ nor esp/; inside ike/ every import goes down
the layers config/events <- codec <- crypto <- tasks <- sa <- endpoint; and ike/ imports at module
level only (a lazy import of a heavy optional dependency would say so with a ``# lazy import``
comment).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("esp", "ike", "tunnel")

# ike/'s layers, bottom first: a module may import its own layer and those below
IKE_LAYERS = (
    ("ike", "ike.config", "ike.events", "ike.pools"),
    ("ike.codec",),
    ("ike.crypto",),
    ("ike.tasks",),
    ("ike.sa",),
    ("ike.endpoint",),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, type_checking: bool = False):
    """(import node, at module level) for every import that runs, and with ``type_checking`` for
    those under ``if TYPE_CHECKING:`` too."""
    def walk(node: ast.AST, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                for sub in child.orelse:
                    yield from walk(sub, top)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, top and not nested and not isinstance(child, ast.ClassDef))
    yield from walk(tree, True)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules of ours an import statement loads (the most specific one per name)."""
    out = set()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if not MODULES[module].name == "__init__.py":
                package = package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def _graph(type_checking: bool = False) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    nested: list[tuple[str, int, str]] = []
    for module, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        for node, top in _imports(ast.parse(source), type_checking):
            targets = _targets(module, node) - {module}
            graph[module] |= targets
            if not top and "lazy import" not in lines[node.lineno - 1]:
                nested.append((module, node.lineno, lines[node.lineno - 1].strip()))
    return graph, nested


GRAPH, NESTED = _graph()
ANNOTATED, _ = _graph(type_checking=True)  # with the imports only type checkers see


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_the_packages():
    assert {"esp.sa", "ike.endpoint", "ike.codec.message", "tunnel.daemon"} <= set(MODULES)
    assert "ike.codec.message" in GRAPH["ike.endpoint"]


@pytest.mark.parametrize("package", ["esp", "ike"])
def test_no_import_cycles(package):
    cycles = [c for c in _cycles(GRAPH) if any(_package(m) == package for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_cycles_in_tunnel():
    cycles = [c for c in _cycles(GRAPH) if all(_package(m) == "tunnel" for m in c)]
    if cycles:
        pytest.xfail(f"tunnel/ still has import cycles (its restructuring is a separate change): {cycles}")


@pytest.mark.parametrize("package, forbidden", [("esp", {"ike", "tunnel"}), ("ike", {"tunnel", "esp"})])
def test_core_packages_import_no_outer_ones(package, forbidden):
    wrong = sorted((m, t) for m, targets in GRAPH.items() if _package(m) == package
                   for t in targets if _package(t) in forbidden)
    assert not wrong


def _layer(module: str) -> int:
    for level, prefixes in enumerate(IKE_LAYERS):
        if any(module == p or (p != "ike" and module.startswith(p + ".")) for p in prefixes):
            return level
    raise AssertionError(f"{module} is in no layer of ike/: add it to IKE_LAYERS")


def test_ike_imports_go_down_the_layers():
    """Even for annotations: a task never names the IKE SA or the endpoint, not under TYPE_CHECKING."""
    wrong = sorted((m, t) for m, targets in ANNOTATED.items() if _package(m) == "ike"
                   for t in targets if _package(t) == "ike" and _layer(t) > _layer(m))
    assert not wrong, "imports going up ike/'s layers: " + ", ".join(f"{m} -> {t}" for m, t in wrong)


def test_ike_imports_at_module_level_only():
    assert [n for n in NESTED if _package(n[0]) == "ike"] == []


def test_the_checker_finds_a_cycle_and_an_upward_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("ike.tasks.ike_init") < _layer("ike.sa.ike_sa") < _layer("ike.endpoint")
