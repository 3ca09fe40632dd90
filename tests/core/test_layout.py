"""The package layout holds: each package imports only from packages below it, no import cycles
(function-level imports included), and no module of rlreg/ over 400 lines."""
from __future__ import annotations

import ast
import collections
from pathlib import Path
from conftest import REPO

ROOT = REPO / "rlreg"
# Bottom to top. The leaves first; a config schema module (rlreg/config.py, rlreg/<pkg>/config.py)
# may be imported from any layer, and imports no rlreg module above its own package.
LAYERS = ["errors", "io", "configlib", "rundir", "device", "console", "numbers", "data", "algos", "model", "actors",
          "baselines", "evaluate", "train", "tune", "estimator", "commands", "cli", "__main__"]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlreg"):
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in found if t in modules and t != name)
    return graph


def _layer(module: str) -> int | str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # rlreg/__init__.py: the lazy RLRegressor export
    if parts[1] == "config" or (len(parts) > 2 and parts[2] == "config"):
        return "schema"
    return LAYERS.index(parts[1])


def test_no_upward_import():
    graph = _imports(_modules())
    upward = []
    for source, targets in graph.items():
        for target in targets:
            low, high = _layer(target), _layer(source)
            if target == "rlreg" or low == "schema" or high is None:
                continue
            if high == "schema":
                if target == "rlreg.config":
                    upward.append(f"{source} -> {target}")
                continue
            if low > high:
                upward.append(f"{source} -> {target}")
    assert upward == []


def test_no_import_cycle():
    graph = _imports(_modules())
    state: dict[str, int] = {}
    cycles: list[list[str]] = []
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if nxt == "rlreg" or node.startswith(nxt + "."):  # a package's __init__ is not a dependency
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in list(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
