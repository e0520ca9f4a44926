"""Search-space items of `moc sweep`: `key.path=KIND:ARGS`; every other `key=value` is a fixed override.

| item | Optuna distribution |
|---|---|
| `key=loguniform:LOW:HIGH` | float, log scale (LOW > 0) |
| `key=uniform:LOW:HIGH` | float |
| `key=int:LOW:HIGH[:STEP]` | integer (STEP default 1) |
| `key=logint:LOW:HIGH` | integer, log scale (LOW >= 1) |
| `key=choice:A,B,C` | categorical; values typed like overrides (`8` int, `3e-4` float, `ffn` string) |
| `key=grid:A,B,C` | categorical, searched exhaustively by Optuna's GridSampler |

Errors are `ConfigError`s (exit code 2) naming the item and the fix. Nothing here imports Optuna.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from moc_cli.config import ConfigError, ConfigIssue

KINDS = ("loguniform", "uniform", "int", "logint", "choice", "grid")
FORMS = {
    "loguniform": "loguniform:LOW:HIGH (e.g. loguniform:1e-4:1e-2)",
    "uniform": "uniform:LOW:HIGH (e.g. uniform:0.0:0.1)",
    "int": "int:LOW:HIGH or int:LOW:HIGH:STEP (e.g. int:1:4)",
    "logint": "logint:LOW:HIGH (e.g. logint:4:64)",
    "choice": "choice:A,B,... (e.g. choice:8,16,32)",
    "grid": "grid:A,B,... (e.g. grid:1e-4,3e-4,1e-3)",
}


@dataclass(frozen=True)
class SearchParam:
    """One searched key: `kind` is one of KINDS; numeric bounds or the list of values."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    values: tuple[Any, ...] = ()

    @property
    def discrete(self) -> bool:
        return self.kind in ("choice", "grid")

    def distribution(self) -> Any:
        """The Optuna distribution of this key."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.discrete:
            return CategoricalDistribution(list(self.values))
        if self.kind in ("int", "logint"):
            return IntDistribution(
                int(self.low), int(self.high), log=self.kind == "logint", step=self.step or 1
            )
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "loguniform")


@dataclass
class SweepSpace:
    """The searched keys and the fixed overrides given with them (in command-line order)."""

    params: list[SearchParam] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def grid(self) -> bool:
        return any(p.kind == "grid" for p in self.params)

    def grid_values(self) -> dict[str, list[Any]]:
        """GridSampler's search space; every key must be discrete (checked by `check_sampler`)."""
        return {p.key: list(p.values) for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params)

    def check_sampler(self, sampler: str) -> str:
        """The sampler to use (`auto`: grid when a `grid:` key is given, else TPE); ConfigError when the
        space does not suit it."""
        if sampler == "auto":
            sampler = "grid" if self.grid else "tpe"
        if self.grid and sampler != "grid":
            key = next(p.key for p in self.params if p.kind == "grid")
            raise ConfigError(
                ConfigIssue(
                    key,
                    f"grid: values are searched by the grid sampler, not --sampler {sampler}; drop --sampler "
                    "(or pass --sampler grid), or write choice:... to let the sampler pick among the values",
                )
            )
        if sampler == "grid":
            continuous = [p for p in self.params if not p.discrete]
            if continuous:
                raise ConfigError(
                    [
                        ConfigIssue(
                            p.key,
                            f"grid search needs a list of values, not {p.kind}:{p.low}:{p.high}; write "
                            f"{p.key}=grid:{p.low},...,{p.high}",
                        )
                        for p in continuous
                    ]
                )
        return sampler


def trial_override(key: str, value: Any) -> str:
    """`key=value` for the config loader; JSON is valid YAML, so the value keeps its type."""
    return f"{key}={json.dumps(value)}"


def _number(item: str, text: str, integer: bool, form: str) -> float | int:
    from moc_cli.config.layering import parse_override

    value = parse_override(f"x={text}")[2]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(ConfigIssue(item, f"{text!r} is not {kind}; {form}"))
    return value


def parse_param(item: str, key: str, kind: str, args: str) -> SearchParam:
    """One `key=kind:args` item as a SearchParam (ConfigError naming the item and the expected form)."""
    form = f"expected {key}={FORMS[kind]}"
    if kind in ("choice", "grid"):
        from moc_cli.config.layering import parse_override

        raw = [v.strip() for v in args.split(",")] if args.strip() else []
        if not raw or any(not v for v in raw):
            raise ConfigError(ConfigIssue(item, f"empty value in the list; {form}"))
        values = tuple(parse_override(f"x={v}")[2] for v in raw)
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(ConfigIssue(item, f"a value is listed twice; {form}"))
        return SearchParam(key, kind, values=values)
    parts = args.split(":")
    integer = kind in ("int", "logint")
    if len(parts) not in ((2, 3) if kind == "int" else (2,)):
        raise ConfigError(ConfigIssue(item, form))
    low, high = (_number(item, p, integer, form) for p in parts[:2])
    step = _number(item, parts[2], True, form) if len(parts) == 3 else None
    if not low < high:
        raise ConfigError(ConfigIssue(item, f"LOW must be below HIGH; {form}"))
    if kind == "loguniform" and low <= 0:
        raise ConfigError(ConfigIssue(item, f"a log scale needs LOW > 0; {form}"))
    if kind == "logint" and low < 1:
        raise ConfigError(ConfigIssue(item, f"a log scale needs LOW >= 1; {form}"))
    if step is not None and step < 1:
        raise ConfigError(ConfigIssue(item, f"STEP must be a positive integer; {form}"))
    return SearchParam(key, kind, low=low, high=high, step=step)


def parse_sweep_items(items: list[str]) -> SweepSpace:
    """Split `key=kind:args` search items from plain overrides; every problem at once (ConfigError)."""
    space = SweepSpace()
    issues: list[ConfigIssue] = []
    for item in items:
        key, sep, value = item.partition("=")
        head, colon, args = value.partition(":")
        if not sep or not colon or item.startswith("~"):
            space.overrides.append(item)
            continue
        if head not in KINDS:
            close = difflib.get_close_matches(head, KINDS, n=1, cutoff=0.75)
            if close:  # a misspelt kind would otherwise reach the config as a string value
                issues.append(
                    ConfigIssue(item, f"unknown search space {head!r}; did you mean {key}={close[0]}:{args}?")
                )
            else:
                space.overrides.append(item)  # e.g. a pkg:// path: a plain value
            continue
        try:
            space.params.append(parse_param(item, key.strip(), head, args))
        except ConfigError as err:
            issues.extend(err.issues)
    keys = [p.key for p in space.params]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        issues.append(ConfigIssue(key, "searched twice; give one search space per key"))
    for override in space.overrides:
        if override.partition("=")[0].strip() in keys:
            issues.append(
                ConfigIssue(override, "this key is also searched; drop the fixed value or the search")
            )
    if issues:
        raise ConfigError(issues)
    return space
