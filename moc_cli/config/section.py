"""The base of every run-config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    # coerce_numbers_to_str: `data.name=1` or a numeric folder name on the command line stays usable.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)
