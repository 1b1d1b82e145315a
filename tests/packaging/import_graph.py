"""The project's own import graph, read from the source with `ast` (nothing is imported).

Every import counts: at module level, inside functions, and under `TYPE_CHECKING`, since each
of them is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = {
    "agentpool": ROOT,
    "agentpool_operator": ROOT / "operator",
    "agentpool_worker": ROOT / "worker",
}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def project_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for top, root in SOURCE_ROOTS.items():
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            modules[name] = Module(name, path)
    return modules


def imported_names(module: Module) -> Iterator[str]:
    """Every dotted name the module imports, relative imports resolved."""
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                yield f"{origin}.{alias.name}"


def resolve(name: str, modules: Mapping[str, Module]) -> str | None:
    """The project module an imported name lands in (`pkg.mod.func` -> `pkg.mod`), if any."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        targets = {resolve(imported, modules) for imported in imported_names(module)}
        graph[name] = {target for target in targets if target and target != name}
    return graph


def outside_imports(module_name: str) -> set[str]:
    """Top-level names of everything the module imports from outside the project."""
    modules = project_modules()
    return {
        imported.split(".")[0]
        for imported in imported_names(modules[module_name])
        if resolve(imported, modules) is None and imported.split(".")[0] not in SOURCE_ROOTS
    }


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)

