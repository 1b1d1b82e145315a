"""Tenants: their names, weights and caps on runs at once, and their loads on a queue."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentpool.protocol.bounds import MAX_TENANT_CHARS, MAX_TENANT_RUNS, MAX_TENANT_WEIGHT
from agentpool.protocol.encoding import has_control_character
from agentpool.protocol.records import ProtocolError
from agentpool.seconds import short_repr


def tenant_arg(tenant: str | None) -> str:
    """The submit script's `tenant` value ('' for none); ProtocolError for a name that is
    empty, too long or holds a control character (it is shown in listings and logs)."""
    if tenant is None:
        return ""
    if not isinstance(tenant, str) or not 1 <= len(tenant) <= MAX_TENANT_CHARS \
            or has_control_character(tenant):
        raise ProtocolError(f"tenant must be a name of 1 to {MAX_TENANT_CHARS} characters, "
                            f"none a control character, got {short_repr(tenant)}")
    return tenant


WEIGHT_TEXT = re.compile(r"[1-9][0-9]?|100")
"""A weight as `set_tenant_weights` writes it."""


def tenant_weight_arg(weight: int) -> int:
    """A tenant's weight, 1 to MAX_TENANT_WEIGHT; ProtocolError otherwise."""
    if isinstance(weight, bool) or not isinstance(weight, int) \
            or not 1 <= weight <= MAX_TENANT_WEIGHT:
        raise ProtocolError(f"a tenant's weight must be a whole number from 1 to "
                            f"{MAX_TENANT_WEIGHT}, got {short_repr(weight)}")
    return weight


def tenant_cap_arg(cap: int) -> int:
    """A cap on a tenant's runs at once, 1 to MAX_TENANT_RUNS; ProtocolError otherwise."""
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_TENANT_RUNS:
        raise ProtocolError(f"a tenant's cap on runs at once must be a whole number from 1 to "
                            f"{MAX_TENANT_RUNS}, got {short_repr(cap)}")
    return cap


CAP_TEXT = re.compile(r"[1-9][0-9]{0,3}")
"""A cap as `set_tenant_caps` writes it."""


@dataclass(frozen=True)
class TenantCaps:
    """Caps on tenants' runs at once (:meth:`TaskQueue.set_tenant_caps`)."""

    caps: Mapping[str, int] = field(default_factory=dict)
    """Per tenant named."""
    default: int | None = None
    """Every other tenant's; None: no cap. Tasks without a tenant have none."""

    def of(self, tenant: str | None) -> int | None:
        if tenant is None:
            return None
        return self.caps.get(tenant, self.default)


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's tasks waiting and running on a queue (`tenant_loads`)."""

    tenant: str | None
    """None: the tasks without a tenant."""
    weight: int
    queued: int = 0
    running: int = 0
    later: int = 0
    """Delayed (a delayed submit, a retry's backoff) or deferred (waiting for the tasks it
    runs after)."""
    oldest_queued: float | None = None
    """Since when its longest-waiting queued task is ready to run (epoch seconds): its submit,
    or when it came due after a delay, a retry's backoff or a requeue."""
    cap: int | None = None
    """The most of its tasks that run at once; None: no cap."""


@dataclass(frozen=True)
class TenantLoads:
    loads: list[TenantLoad]
    """Most queued first."""
    counted: int
    """The tasks read; fewer than `total` when the sets held more than the reading's bound."""
    total: int


TENANT_SETS = (("queued", "queued"), ("running", "leases"), ("later", "delayed"),
                ("later", "deferred"))
"""What `TaskQueue.tenant_loads` counts, and the set it reads for it."""


def tally_tenants(weights: Mapping[str, int],
                  tasks: Iterable[tuple[str, str | None, float | None]],
                  caps: TenantCaps = TenantCaps()) -> list[TenantLoad]:
    """Each tenant's load from its tasks, given as (kind: queued, running or later; tenant,
    None for none; ready to run since), and each weighted or capped tenant's even without tasks;
    most queued first, then most running, then by name."""
    counts: dict[str | None, dict[str, Any]] = {
        tenant: {} for tenant in [*weights, *caps.caps]}
    for kind, tenant, ready in tasks:
        load = counts.setdefault(tenant, {})
        load[kind] = load.get(kind, 0) + 1
        if kind == "queued" and ready is not None:
            load["oldest_queued"] = min(ready, load.get("oldest_queued", ready))
    loads = [TenantLoad(tenant, weights.get(tenant, 1) if tenant else 1, **fields,
                        cap=caps.of(tenant))
             for tenant, fields in counts.items()]
    loads.sort(key=lambda load: (-load.queued, -load.running, load.tenant or ""))
    return loads
