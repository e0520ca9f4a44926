"""Config errors: every problem at once, each with its key path, source layer and a suggestion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

# Common spellings that string similarity misses.
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a misspelt key or value, or None when nothing is close."""
    candidates = list(candidates)
    alias = _ALIASES.get(str(word).lower())
    if alias in candidates:
        return alias
    matches = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return matches[0] if matches else None


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: `path` is the dotted key (or the CLI argument), `source` the layer it came from."""

    path: str
    message: str
    source: str | None = None
    suggestion: str | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.suggestion is not None:
            text += f"; did you mean '{self.suggestion}'?"
        if self.source:
            text += f" [from {self.source}]"
        return text


class ConfigError(ValueError):
    """Raised before anything heavy loads; carries every issue found."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue) -> None:
        self.issues: list[ConfigIssue] = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.issues)
        head = f"invalid config ({n} error{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  - {issue}" for issue in self.issues)])


class SetupError(ConfigError):
    """One problem found while setting something up as configured (a model, a run): `message` names
    the key or path and the fix. A ConfigError, so the CLI reports it like any config problem
    (exit code 2)."""

    def __init__(self, message: str, key: str = "") -> None:
        self.message = message
        super().__init__(ConfigIssue(key, message))
