"""Read config sections as plain dicts, whatever object (pydantic model, dataclass, dict) carries them."""

from __future__ import annotations

import dataclasses
from typing import Any


def as_dict(section: Any) -> dict[str, Any]:
    """A shallow-copied dict of a config section (`None` -> `{}`)."""
    if section is None:
        return {}
    if isinstance(section, dict):
        return dict(section)
    if hasattr(section, "model_dump"):
        return section.model_dump()
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    return dict(vars(section))
