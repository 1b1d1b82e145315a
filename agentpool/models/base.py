"""The base of every model and the helpers that shape their JSON schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """Fields in snake_case in Python and camelCase in the resource, as the API writes them."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


IntOrString = int | str
Quantity = Annotated[IntOrString, Field(description="A quantity such as 2, 500m or 1Gi.")]


def full_default(model: type[BaseModel]) -> dict[str, Any]:
    """JSON-schema extra giving an object field its model's defaults, written out in full.

    The API server checks a `default` against its node's rules without filling in the
    defaults nested inside it, so `default: {}` would fail a rule such as
    `self.minReplicas <= self.maxReplicas`.
    """
    return {"default": model().model_dump(by_alias=True, exclude_none=True, mode="json")}

