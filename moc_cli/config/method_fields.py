"""The `method` section of the run schema, derived from each method's peft config dataclass.

A method's options are declared once, as fields of its config dataclass (`MocConfig`,
`MolexConfig`, peft's `LoraConfig` and `IA3Config`): their names, types (a `Literal` gives the
choices), defaults and `metadata["help"]` become the schema's fields, so `moc schema`, the
did-you-mean suggestions and the loader's type errors need no second copy. Value rules are the
dataclass's own: each field is checked by constructing the config with that field alone (so an
error names `method.<key>`), then the whole section by constructing it with every field, as
torchtune binds a config to the real callable before a run starts.

Building these models imports the config classes, hence peft and torch; `moc_cli.config` imports
this module only when a run config is validated or the schema listed.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from moc_cli.config.section import Section
from moc_cli.methods import METHODS, Method


def _default(method: Method, field: dataclasses.Field) -> Any:
    if field.name in method.implied:
        return method.implied[field.name]
    if field.name in method.defaults:
        return method.defaults[field.name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{method.config_class}.{field.name} has no default; the run schema needs one")


def _construct(method: Method, values: dict[str, Any]) -> Any:
    """The peft config for these values, or a ValueError with the dataclass's own message."""
    config_cls = method.load_config_class()
    try:
        return config_cls(**{**values, **method.implied})
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _section_model(method: Method) -> type[Section]:
    """The pydantic model of `method.name=<name>`: one field per option of the config dataclass."""
    definitions: dict[str, Any] = {"name": (Literal[method.name], Field(description=method.summary))}
    option_fields = method.option_fields()
    hints = typing.get_type_hints(method.load_config_class()) if option_fields else {}
    for field in option_fields:
        help_text = field.metadata.get("help", "")
        if field.name in method.implied:
            help_text = f"Always {method.implied[field.name]!r} for method.name={method.name}. {help_text}"
        bounds = dict(method.bounds.get(field.name, {}))
        definitions[field.name] = (
            hints[field.name],
            Field(_default(method, field), description=help_text, **bounds),
        )
    names = [f.name for f in option_fields]
    validators: dict[str, Any] = {}
    if names:

        def check_alone(cls: type, value: Any, info: Any) -> Any:
            implied = method.implied.get(info.field_name, value)
            if value != implied:
                raise ValueError(
                    f"method.name={method.name} always has {info.field_name}={implied!r}; "
                    f"choose another method.name to change it"
                )
            if info.field_name not in method.implied:
                _construct(method, {info.field_name: value})
            return value

        def check_together(self: Section) -> Section:
            _construct(method, {name: getattr(self, name) for name in names})
            return self

        validators["check_alone"] = field_validator(*names)(check_alone)
        validators["check_together"] = model_validator(mode="after")(check_together)
    title = "".join(part.capitalize() for part in method.name.split("_")) + "Method"
    return create_model(
        title,
        __base__=Section,
        __doc__=method.summary,
        __validators__=validators,
        **definitions,
    )


# One model per method, in the table's order (the schema's tagged union and `moc schema` use it).
METHOD_MODELS: dict[str, type[Section]] = {name: _section_model(m) for name, m in METHODS.items()}


def method_union() -> Any:
    """The `method` field's type: the section models, told apart by `name`."""
    return typing.Annotated[typing.Union[tuple(METHOD_MODELS.values())], Field(discriminator="name")]  # noqa: UP007 (a runtime tuple of types)
