"""RFC 7386 JSON merge patch, applied as the API server applies `application/merge-patch+json`:
for the kmock harness's PATCH handling and for the Deployment decision tests."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge_patch(doc: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(doc) if isinstance(doc, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
