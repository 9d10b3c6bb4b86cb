"""The package's layout: no import cycles (imports inside functions count), and the leaves stay leaves."""

import ast
import importlib
import re
from pathlib import Path

import maskdit
from maskdit.registry import Registry

ROOT = Path(maskdit.__file__).parent
#: Modules everything may import, which import only each other (and the outside world).
LEAVES = {"maskdit.errors", "maskdit.registry", "maskdit.files", "maskdit.grid", "maskdit.masks"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> maskdit modules it imports``, anywhere in its source (module level or inside functions)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # ``from pkg import sub`` imports the submodule sub; ``from mod import name`` imports mod
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles_even_counting_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_leaf_modules_import_only_other_leaves():
    graph = import_graph()
    assert LEAVES <= set(graph)
    assert {leaf: graph[leaf] - LEAVES for leaf in LEAVES} == {leaf: set() for leaf in LEAVES}


def test_no_module_inside_a_package_imports_that_package_itself():
    graph = import_graph()
    packages = {module_name(p) for p in ROOT.rglob("__init__.py")} - {"maskdit"}
    offenders = {(m, p) for m, imports in graph.items() for p in imports & packages if m.startswith(p + ".")}
    assert offenders == set()


def registries() -> list[tuple[str, str, Registry]]:
    """``(module, name, registry)`` for every module-level ``NAME = Registry(...)`` in the package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        if name.endswith("__main__"):
            continue
        for var in re.findall(r"^([A-Z_]+)(?::[^=\n]+)? = Registry\(", path.read_text(), re.M):
            found.append((name, var, getattr(importlib.import_module(name), var)))
    return found


def test_every_registry_and_every_name_in_it_is_listed_in_the_architecture_doc():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    found = registries()
    assert len(found) >= 30
    missing = [f"{var} ({name}): {entry}" for name, var, registry in found
               for entry in [var, *registry.names()] if f"`{entry}`" not in doc]
    assert missing == []
