"""The layering of the three packages, read from their imports.

- `agentpool` (models, protocol, client, scaling policy) imports neither the operator, nor the
  worker, nor its own command line;
- `agentpool.cli` imports neither the operator nor the worker (it runs the worker as a process);
- `agentpool.console` (served by `agentpool console`, reusing the command line's fleet view)
  imports neither the operator nor the worker, and nothing shared imports the console;
- the operator and the worker do not import each other;
- the scaling policy needs nothing but the standard library and the models;
- the task protocol and the API models are used through their packages (`agentpool.protocol`,
  `agentpool.models`), never by reaching into the modules they are made of;
- no module reaches itself through its imports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from import_graph import Module, cycles, import_graph, imported_names, outside_imports


def imports_of(prefix: str) -> dict[str, set[str]]:
    return {
        module: targets
        for module, targets in import_graph().items()
        if module == prefix or module.startswith(prefix + ".")
    }


def offending(prefix: str, *, forbidden: tuple[str, ...],
              exempt: tuple[str, ...] = ()) -> list[str]:
    found = []
    for module, targets in imports_of(prefix).items():
        if any(module == e or module.startswith(e + ".") for e in exempt):
            continue
        found.extend(f"{module} -> {t}" for t in sorted(targets)
                     if any(t == f or t.startswith(f + ".") for f in forbidden))
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_shared_package_imports_no_operator_worker_cli_or_console() -> None:
    forbidden = ("agentpool_operator", "agentpool_worker", "agentpool.cli", "agentpool.console")
    assert offending("agentpool", forbidden=forbidden,
                     exempt=("agentpool.cli", "agentpool.console")) == []


def test_console_imports_neither_operator_nor_worker() -> None:
    assert imports_of("agentpool.console")
    forbidden = ("agentpool_operator", "agentpool_worker")
    assert offending("agentpool.console", forbidden=forbidden) == []


def test_cli_imports_neither_operator_nor_worker() -> None:
    forbidden = ("agentpool_operator", "agentpool_worker")
    assert offending("agentpool.cli", forbidden=forbidden) == []


def test_operator_and_worker_stay_apart() -> None:
    assert offending("agentpool_operator", forbidden=("agentpool_worker", "agentpool.cli")) == []
    assert offending("agentpool_worker", forbidden=("agentpool_operator", "agentpool.cli")) == []


def test_scaling_policy_needs_only_the_standard_library() -> None:
    scaling = [m for m in import_graph() if m.startswith("agentpool.scaling")]
    assert scaling
    outside = {m: outside_imports(m) - sys.stdlib_module_names for m in scaling}
    assert {m: names for m, names in outside.items() if names} == {}


@pytest.mark.parametrize("inside", ["agentpool.protocol", "agentpool.models"])
def test_the_protocol_and_the_models_are_used_through_their_packages(inside: str) -> None:
    users = {m: targets for m, targets in import_graph().items()
             if m != inside and not m.startswith(inside + ".")}
    assert any(inside in targets for targets in users.values())
    reaching_in = [f"{m} -> {t}" for m, targets in users.items() for t in sorted(targets)
                   if t.startswith(inside + ".")]
    assert reaching_in == []


def test_cycle_finder_sees_a_circle_through_any_import(tmp_path: Path) -> None:
    source = tmp_path / "late.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .types import Result\n"
        "def act():\n    from . import actions\n"
    )
    names = set(imported_names(Module("pkg.late", source)))
    assert {"pkg.types.Result", "pkg.actions"} <= names
    graph = {"pkg.late": {"pkg.actions"}, "pkg.actions": {"pkg.late"}, "pkg.types": set()}
    assert cycles(graph) == [["pkg.actions", "pkg.late"]]
