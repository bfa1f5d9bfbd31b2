"""tunnel/'s packages depend on each other one way, and no two modules import each other in a cycle.

kernel (devices and sockets) <- dataplane (the per-packet path) <- daemon (the loop) <- main;
ops (config, control socket, logging, key export, the CLI) <- daemon; the lab uses the product,
never the other way round (``tunnel.main`` imports the demo on demand, the one exception).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("kernel", "ops", "dataplane", "daemon", "lab")
MAY_IMPORT = {
    "kernel": {"kernel"},
    "ops": {"ops"},
    "dataplane": {"dataplane", "kernel"},
    "daemon": {"daemon", "dataplane", "kernel", "ops"},
    "lab": {"lab", "ops"},
}


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(ROOT).with_suffix("").parts): path
            for path in (ROOT / "tunnel").rglob("*.py") if path.name != "__init__.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("tunnel.")}


def test_packages_depend_one_way():
    wrong = []
    for module, path in _modules().items():
        layer = module.split(".")[1]
        if layer not in MAY_IMPORT:
            continue
        for name in _imports(path):
            target = name.split(".")[1]
            if target in LAYERS and target not in MAY_IMPORT[layer]:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_no_import_cycles():
    modules = _modules()
    graph = {module: {name for name in _imports(path) if name in modules} for module, path in modules.items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in graph[module]:
            assert state.get(target) != 1, " -> ".join(trail + [module, target])
            if target not in state:
                visit(target, trail + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
