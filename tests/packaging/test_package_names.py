"""The package's public names load on first use: `import agentpool` alone (the CLI's entry
point, before its Ctrl-C guard) loads neither the protocol nor redis-py."""

from __future__ import annotations

import subprocess
import sys

import agentpool


def test_importing_the_package_loads_neither_the_protocol_nor_redis() -> None:
    code = ("import sys, agentpool; "
            "print(sorted(m for m in ('agentpool.protocol', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_and_the_former_submodule_attributes_resolve() -> None:
    from agentpool import protocol
    from agentpool.durability import Durability

    for name in agentpool.__all__:
        assert getattr(agentpool, name) is not None
        assert name in dir(agentpool)
    assert agentpool.TaskQueue is protocol.TaskQueue
    assert agentpool.Durability is Durability
    assert agentpool.protocol is protocol
    try:
        agentpool.TaskQeue  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "TaskQeue" in str(error)
    else:
        raise AssertionError("a misspelt name resolved")
