"""The import graph points down and the code stays in short units.

Every import (module level and inside functions) of every file in ``mobilekd/``, ``export/``, ``benchmarks/`` and
``ship/`` is read with ``ast``. The graph must have no cycle between files and point down the layering
mobilekd < export < benchmarks < ship (``ship``, the composition root, is the only package that imports all three;
the one allowed upward import is the ``mobilekd/__main__.py`` trampoline that makes ``python -m mobilekd`` run
``ship.cli``); in ``mobilekd/`` no class is over 250 lines and no function over 80. ``python tests/test_architecture.py`` prints the number of dependency floors (the longest
import chain), the chain itself and the longest units.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mobilekd", "export", "benchmarks", "ship")
# the only import against the layering: ``python -m mobilekd`` is the ``mobilekd`` command of the composition root
ALLOWED_UPWARD = {("mobilekd.__main__", "ship.cli")}
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under PACKAGES (a package is its ``__init__.py``)."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _known(name: str, files: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None: a third-party or standard module)."""
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, files: dict[str, Path]) -> set[str]:
    """Our modules that ``module`` imports anywhere in its file (``from pkg import submodule`` -> submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, files) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in files else _known(base, files))
    found.discard(None)
    found.discard(module)
    return found


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    files = module_files()
    return {module: frozenset(imports_of(module, path, files)) for module, path in files.items()}


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def longest_chain(graph) -> list[str]:
    """The longest import chain of an acyclic graph: its length is the number of dependency floors."""
    @functools.lru_cache(maxsize=None)
    def chain(module: str) -> tuple[str, ...]:
        below = [chain(target) for target in sorted(graph[module])]
        return (module, *max(below, key=len, default=()))

    return list(max((chain(module) for module in sorted(graph)), key=len))


def upward_imports(graph) -> list[tuple[str, str]]:
    """Imports against the layering mobilekd < export < benchmarks < ship (except ``ALLOWED_UPWARD``)."""
    rank = {package: i for i, package in enumerate(PACKAGES)}
    return sorted((source, target) for source, targets in graph.items() for target in targets
                  if rank[target.split(".")[0]] > rank[source.split(".")[0]]
                  and (source, target) not in ALLOWED_UPWARD)


def long_units() -> list[tuple[int, str, str]]:
    """(lines, kind, file:name) of every mobilekd class over MAX_CLASS_LINES / function over MAX_FUNCTION_LINES."""
    found = []
    for module, path in module_files().items():
        relative = path.relative_to(ROOT).as_posix()
        if not module.startswith("mobilekd"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                if lines > limit:
                    found.append((lines, type(node).__name__, f"{relative}:{node.name}"))
    return sorted(found, reverse=True)


def _body(node) -> str:
    """A function's statements without its docstring, as an ast dump (names and code, not formatting)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return ast.dump(ast.Module(body=body, type_ignores=[]))


def repeated_definitions() -> list[list[str]]:
    """Top-level functions with the same code in two places, and names defined twice in one file."""
    by_body: dict[str, list[str]] = {}
    repeated = []
    for path in module_files().values():
        relative = path.relative_to(ROOT).as_posix()
        names = []
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.append(node.name)
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 3:
                by_body.setdefault(_body(node), []).append(f"{relative}:{node.name}")
        repeated += [[f"{relative}:{name}"] * 2 for name in sorted(set(names)) if names.count(name) > 1]
    return repeated + [places for places in by_body.values() if len(places) > 1]


def test_the_graph_sees_package_and_function_level_imports():
    graph = import_graph()
    assert "mobilekd.models.checkpoint" in graph["mobilekd.models"]  # a package __init__ re-export
    assert "mobilekd.weights.tflite_check" in graph["mobilekd.weights.from_file"]  # from package import module
    assert "mobilekd.engine" in graph["benchmarks.distill_cub"]  # imported inside a function only


def test_only_the_trampoline_imports_the_composition_root():
    graph = import_graph()
    importers = {source for source, targets in graph.items() if not source.startswith("ship")
                 for target in targets if target.split(".")[0] == "ship"}
    assert importers == {"mobilekd.__main__"} and "ship.cli" in graph["mobilekd.__main__"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_point_down():
    assert upward_imports(import_graph()) == []


def test_mobilekd_units_are_short():
    assert long_units() == []


def test_one_definition_of_each_helper():
    assert repeated_definitions() == []


if __name__ == "__main__":
    graph = import_graph()
    chain = longest_chain(graph) if not cycles(graph) else []
    print(f"modules: {len(graph)}; cycles: {cycles(graph)}; upward imports: {upward_imports(graph)}")
    print(f"dependency floors: {len(chain)}: " + " -> ".join(chain))
    print(f"long units: {long_units()}")
