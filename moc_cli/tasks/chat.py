"""Chat fine-tuning on your own files: OpenAI-style `messages` or ShareGPT-style `conversations`.

Formats (option `format`: auto | openai | sharegpt; auto picks by column):

- OpenAI: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`
- ShareGPT: `{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}`, with an
  optional top-level `"system"` string (LLaMA-Factory's layout); `user`/`assistant` are accepted as
  `from` values too.

Local `.jsonl`, `.json` (array) or `.parquet` files, one per split (`data.path` = a file or a folder
of `<split>.<ext>`, or `data.files`). Every conversation is checked on load, and a problem names the
file, the line (JSON Lines; `record N` / `row N` otherwise, counted from 0) and the field, e.g.
`messages[2].role`. Conversations are normalised to `messages` and rendered by `InstructTask`: the
tokenizer's chat template (option `template`), loss on assistant turns only, `packing` available.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from moc_cli.tasks import io
from moc_cli.tasks.base import TaskDataError, TaskOptionError
from moc_cli.tasks.instruct import ROLES, InstructTask
from moc_cli.tasks.registry import register_task

if TYPE_CHECKING:
    import datasets

FORMATS = ("auto", "openai", "sharegpt")
# ShareGPT speaker names -> chat roles (the OpenAI role names are accepted as they are)
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
# column, speaker key, text key, accepted speakers (as listed in errors)
LAYOUTS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "openai": ("messages", "role", "content", ROLES),
    "sharegpt": ("conversations", "from", "value", ("system", "human", "gpt", "user", "assistant")),
}


@register_task
class Chat(InstructTask):
    name = "instruct/chat"
    description = "Chat fine-tuning on your own OpenAI-messages or ShareGPT files (causal LM): held-out loss"
    hub_path = None
    option_defaults: ClassVar[dict[str, Any]] = {
        **InstructTask.option_defaults,
        "format": "auto",  # auto (by column) | openai (`messages`) | sharegpt (`conversations`)
    }

    def check_options(self) -> None:
        super().check_options()
        if self.options["format"] not in FORMATS:
            raise TaskOptionError(
                f"task {self.name}: option format must be one of {', '.join(FORMATS)}, "
                f"got {self.options['format']!r}"
            )

    def data_format(self, ds: datasets.Dataset, origin: str, split: str) -> str:
        """The format of a split: the `format` option, or the column the file has."""
        chosen = self.options["format"]
        found = [f for f, (column, *_) in LAYOUTS.items() if column in ds.column_names]
        if chosen == "auto" and len(found) == 1:
            return found[0]
        where = f"task {self.name}: {origin} (split {split!r})"
        if chosen == "auto":
            what = "both 'messages' and 'conversations'" if found else f"columns {ds.column_names}"
            raise TaskDataError(
                f"{where}: has {what}; expected a 'messages' column (OpenAI style) or a 'conversations' column "
                "(ShareGPT style); choose one with task.options.format=openai|sharegpt"
            )
        column = LAYOUTS[chosen][0]
        if column not in ds.column_names:
            raise TaskDataError(
                f"{where}: task.options.format={chosen} needs a {column!r} column; the file has columns "
                f"{ds.column_names}"
            )
        return chosen

    def validate_split(self, ds: datasets.Dataset, split: str, origin: str) -> datasets.Dataset:
        """Check every conversation and return the split as one `messages` column (OpenAI style)."""
        import datasets

        fmt = self.data_format(ds, origin, split)
        column = LAYOUTS[fmt][0]
        systems = (
            io.column_values(ds, "system") if fmt == "sharegpt" and "system" in ds.column_names else None
        )
        conversations = []
        for row, turns in enumerate(io.column_values(ds, column)):
            where = f"task {self.name}: {origin}: {io.where(origin, row)}"
            messages = conversation_messages(where, fmt, turns)
            system = systems[row] if systems is not None else None
            if system:
                if not isinstance(system, str):
                    raise TaskDataError(
                        f"{where}: field 'system' has {type(system).__name__}; expected a string"
                    )
                messages.insert(0, {"role": "system", "content": system})
            conversations.append(messages)
        return datasets.Dataset.from_dict({"messages": conversations})


def conversation_messages(where: str, fmt: str, turns: Any) -> list[dict[str, str]]:
    """One conversation as OpenAI-style messages; TaskDataError names the field that is wrong."""
    column, speaker, text, accepted = LAYOUTS[fmt]
    if turns is None or (isinstance(turns, list) and not turns):
        raise TaskDataError(
            f"{where}: field {column!r} is an empty conversation; give at least one user turn and one "
            "assistant reply"
        )
    if not isinstance(turns, list):
        raise TaskDataError(
            f"{where}: field {column!r} has {type(turns).__name__}; expected a list of "
            f"{{{speaker!r}, {text!r}}} objects"
        )
    messages = []
    for i, turn in enumerate(turns):
        field = f"{column}[{i}]"
        if not isinstance(turn, Mapping) or turn.get(speaker) is None:
            raise TaskDataError(
                f"{where}: field {field!r} needs a {speaker!r} key (one of {', '.join(accepted)})"
            )
        role = turn[speaker]
        names = dict(zip(ROLES, ROLES, strict=True)) if fmt == "openai" else SHAREGPT_ROLES
        mapped = names.get(role) if isinstance(role, str) else None
        if mapped is None:
            raise TaskDataError(
                f"{where}: field '{field}.{speaker}' is {role!r}; expected one of {', '.join(accepted)}"
            )
        content = turn.get(text)
        if not isinstance(content, str):
            problem = "is missing" if content is None else f"has {type(content).__name__} {content!r}"
            raise TaskDataError(f"{where}: field '{field}.{text}' {problem}; expected a string")
        messages.append({"role": mapped, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        roles = ", ".join(str(t[speaker]) for t in turns)
        raise TaskDataError(
            f"{where}: field {column!r} has no assistant turn (speakers: {roles}), so there is no reply to learn "
            "from; add the reply or drop the conversation"
        )
    return messages
