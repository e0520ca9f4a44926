"""Instruction tuning for causal LMs: Alpaca, Dolly, and any instruction/input/output or chat data.

Records are either instruction/input/output rows (Dolly: instruction/context/response) or chat-style
`messages` lists of {"role", "content"}. They are rendered with the tokenizer's chat template when it
has one, else with the plain Alpaca template below. The loss covers response tokens only (labels are
-100 on prompts). Sequences longer than `max_length` lose prompt tokens from the left first (the
response marker and the end of the prompt stay); an example whose final response cannot fit next to
`min_prompt_tokens` prompt tokens is dropped and counted in a warning, never truncated silently.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from moc_cli.generation import generate_greedy, pad_token_id
from moc_cli.tasks import io
from moc_cli.tasks.base import DataSource, Task, TaskDataError, TaskOptionError
from moc_cli.tasks.registry import register_task

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# The plain template (Stanford Alpaca's), used when the tokenizer has no chat template.
PLAIN_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PLAIN_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# Later turns of a multi-turn conversation in the plain template.
PLAIN_TURN = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_TURN_SEPARATOR = "\n\n"

ROLES = ("system", "user", "assistant")


def plain_prompt(instruction: str, input: str | None = None) -> str:
    """The Alpaca prompt for one instruction (ends with "### Response:\\n")."""
    if input:
        return PLAIN_PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PLAIN_PROMPT_NO_INPUT.format(instruction=instruction)


def instruction_messages(instruction: str, input: str | None, output: str | None) -> list[dict[str, str]]:
    """An instruction record as a chat: the input follows the instruction in the user turn."""
    user = f"{instruction}\n\n{input}" if input else instruction
    messages = [{"role": "user", "content": user}]
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, template: str) -> bool:
    if template == "plain":
        return False
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise TaskOptionError(
            "task option template='chat' but the tokenizer has no chat template; use template: auto or plain"
        )
    return has


# A segment is (token ids, trainable).
Segment = tuple[list[int], bool]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def chat_segments(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> list[Segment]:
    """Split the chat-template rendering into prompt and assistant-turn segments.

    Each assistant turn is the text the template adds after the generation prompt of the history
    before it (so the end-of-turn marker is trained on, the role header is not).
    """
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(list(messages[:i]), add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise TaskDataError(
                "the tokenizer's chat template does not render conversations incrementally (a prefix of the "
                "conversation is not a prefix of its rendering); set task option template: plain"
            )
        segments.append((_ids(tokenizer, prefix[len(done) :]), False))
        segments.append((_ids(tokenizer, full[len(prefix) :]), True))
        done = full
    return segments


def _bos_eos(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return bos, eos


def plain_instruction_segments(
    tokenizer: PreTrainedTokenizerBase, instruction: str, input: str | None, output: str | None
) -> list[Segment]:
    """BOS + Alpaca prompt (not trained) and response + EOS (trained); no response when output is None."""
    bos, eos = _bos_eos(tokenizer)
    segments: list[Segment] = [(bos + _ids(tokenizer, plain_prompt(instruction, input)), False)]
    if output is not None:
        segments.append((_ids(tokenizer, output) + eos, True))
    return segments


def plain_segments(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> list[Segment]:
    """The plain template for a conversation: system text, then the Alpaca prompt, then later turns.

    Consecutive user messages are joined; every assistant message is a trained response + EOS.
    """
    bos, eos = _bos_eos(tokenizer)
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    segments: list[Segment] = [(bos, False)] if bos else []
    first = True
    pending_user: list[str] = []
    for message in messages:
        if message["role"] == "user":
            pending_user.append(message["content"])
            continue
        if message["role"] != "assistant":
            continue
        instruction = "\n\n".join(pending_user)
        pending_user = []
        if first:
            text = (system + "\n\n" if system else "") + plain_prompt(instruction)
            first = False
        else:
            text = PLAIN_TURN_SEPARATOR + PLAIN_TURN.format(instruction=instruction)
        segments.append((_ids(tokenizer, text), False))
        segments.append((_ids(tokenizer, message["content"]) + eos, True))
    if pending_user:  # a generation prompt: the conversation ends with the user's turn
        instruction = "\n\n".join(pending_user)
        if first:
            text = (system + "\n\n" if system else "") + plain_prompt(instruction)
        else:
            text = PLAIN_TURN_SEPARATOR + PLAIN_TURN.format(instruction=instruction)
        segments.append((_ids(tokenizer, text), False))
    return segments


def fit_segments(segments: list[Segment], max_length: int, min_prompt_tokens: int) -> Segment | None:
    """Concatenate to (input_ids, labels-as-mask) within max_length, or None when the response can't fit.

    Prompt tokens are removed from the left; the last trainable segment (the final response) is
    always kept whole. An earlier response cut by the truncation becomes untrained context.
    """
    last = max((i for i, (_, t) in enumerate(segments) if t), default=None)
    if last is None:
        return None
    tail = sum(len(ids) for ids, _ in segments[last:])
    head = sum(len(ids) for ids, _ in segments[:last])
    if tail + min(head, min_prompt_tokens) > max_length:
        return None
    ids: list[int] = []
    mask: list[bool] = []
    for seg_ids, trainable in segments:
        ids.extend(seg_ids)
        mask.extend([trainable] * len(seg_ids))
    excess = len(ids) - max_length
    if excess > 0:
        ids, mask = ids[excess:], mask[excess:]
        # an earlier response cut in half has lost its prompt: keep it as context, don't train on it
        first_prompt = mask.index(False) if False in mask else 0
        mask[:first_prompt] = [False] * first_prompt
    return ids, mask  # type: ignore[return-value]


@dataclass
class CausalLMCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(features), length), dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            attn[row, :n] = 1
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def pack_examples(input_ids: list[list[int]], labels: list[list[int]], max_length: int) -> dict[str, list]:
    """Greedy packing in order: whole examples are concatenated into blocks of at most max_length."""
    out_ids: list[list[int]] = []
    out_labels: list[list[int]] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    for ids, lab in zip(input_ids, labels, strict=True):
        if cur_ids and len(cur_ids) + len(ids) > max_length:
            out_ids.append(cur_ids)
            out_labels.append(cur_labels)
            cur_ids, cur_labels = [], []
        cur_ids = cur_ids + ids
        cur_labels = cur_labels + lab
    if cur_ids:
        out_ids.append(cur_ids)
        out_labels.append(cur_labels)
    return {"input_ids": out_ids, "attention_mask": [[1] * len(x) for x in out_ids], "labels": out_labels}


class InstructTask(Task):
    """Causal-LM instruction tuning on instruction/input/output or `messages` records."""

    kind = "causal_lm"
    main_metric = "loss"
    greater_is_better = False
    eval_splits = ["validation"]
    test_split = None
    # Hub column names of the instruction, optional input and response.
    instruction_field: ClassVar[str] = "instruction"
    input_field: ClassVar[str | None] = "input"
    output_field: ClassVar[str] = "output"
    option_defaults: ClassVar[dict[str, Any]] = {
        "template": "auto",  # auto: chat template when the tokenizer has one, else plain; or chat / plain
        "packing": False,  # pack whole training examples into max_length blocks
        "validation_size": 0.02,  # held out from train when there is no validation split (fraction or count)
        "min_prompt_tokens": 16,  # drop examples whose response leaves less room than this for the prompt
        "generation_prompts": None,  # JSONL file or list of instructions for evaluate_generation
        "num_generation_prompts": 16,  # else the first N records of the evaluated split
        "repetition_penalty": 1.0,  # > 1 discourages tokens already in a sample's prompt or reply (1: none)
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.data_origin: dict[str, str] = {}
        self.dropped: dict[str, int] = {}

    def check_options(self) -> None:
        if self.options["template"] not in ("auto", "chat", "plain"):
            raise TaskOptionError(
                f"task {self.name}: option template must be auto, chat or plain, got {self.options['template']!r}"
            )
        penalty = self.options["repetition_penalty"]
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or penalty < 1.0:
            raise TaskOptionError(
                f"task {self.name}: option repetition_penalty must be a number >= 1.0 (1.0: no penalty, "
                f"1.1-1.3 typical), got {penalty!r}"
            )

    # ---- loading -----------------------------------------------------------------------------
    @property
    def record_columns(self) -> tuple[str, ...]:
        return (self.instruction_field, self.output_field)

    def load(self, source: DataSource) -> datasets.DatasetDict:
        self.apply_options(source.options)
        dd, self.data_origin = io.load_raw(
            self.name, source, ["train", "validation", "test"], self.hub_path, self.hub_name
        )
        for split in list(dd):
            dd[split] = self.validate_split(dd[split], split, self.data_origin[split])
        if "validation" not in dd and "train" in dd:
            size = self.options["validation_size"]
            if size:
                parts = dd["train"].train_test_split(test_size=size, seed=source.seed, shuffle=True)
                dd["train"], dd["validation"] = parts["train"], parts["test"]
        return io.limit_samples(dd, source, "train", ["validation"], "test")

    def validate_split(self, ds: datasets.Dataset, split: str, origin: str) -> datasets.Dataset:
        if "messages" in ds.column_names:
            for row, messages in enumerate(io.column_values(ds, "messages")):
                check_messages(self.name, origin, split, io.where(origin, row), messages)
            return ds
        optional = ("messages",) + ((self.input_field,) if self.input_field else ())
        io.check_columns(self.name, ds, origin, split, self.record_columns, optional)
        io.check_texts(self.name, ds, origin, split, self.record_columns)
        if self.input_field and self.input_field not in ds.column_names:
            ds = ds.add_column(self.input_field, [""] * len(ds))
        return ds

    # ---- rendering ---------------------------------------------------------------------------
    def record_messages(self, row: Mapping[str, Any], with_response: bool = True) -> list[dict[str, str]]:
        if row.get("messages"):
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            if not with_response:
                while messages and messages[-1]["role"] == "assistant":
                    messages.pop()
            return messages
        inp = row.get(self.input_field) if self.input_field else None
        return instruction_messages(
            row[self.instruction_field], inp or None, row[self.output_field] if with_response else None
        )

    def segments(
        self, tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any], with_response: bool = True
    ) -> list[Segment]:
        """Token segments of a record: (ids, trainable) pairs, rendered by chat template or plain."""
        if uses_chat_template(tokenizer, self.options["template"]):
            messages = self.record_messages(row, with_response)
            if with_response:
                return chat_segments(tokenizer, messages)
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return [(_ids(tokenizer, text), False)]
        if row.get("messages"):
            return plain_segments(tokenizer, self.record_messages(row, with_response))
        inp = row.get(self.input_field) if self.input_field else None
        output = row[self.output_field] if with_response else None
        return plain_instruction_segments(tokenizer, row[self.instruction_field], inp or None, output)

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any]) -> list[int]:
        """Token ids of the generation prompt for a record, rendered exactly as in training."""
        return [t for ids, _ in self.segments(tokenizer, row, with_response=False) for t in ids]

    # ---- features ----------------------------------------------------------------------------
    def encode(
        self, tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any], max_length: int
    ) -> tuple[list[int], list[int]] | None:
        fitted = fit_segments(self.segments(tokenizer, row), max_length, self.options["min_prompt_tokens"])
        if fitted is None:
            return None
        ids, mask = fitted
        return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]

    def preprocess(
        self, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.DatasetDict:
        import datasets

        out = {}
        for split, ds in raw.items():
            ids_list, label_list = [], []
            dropped = 0
            for row in ds.to_list():  # one arrow conversion; row iteration decodes row by row
                enc = self.encode(tokenizer, row, max_length)
                if enc is None:
                    dropped += 1
                    continue
                ids_list.append(enc[0])
                label_list.append(enc[1])
            self.dropped[split] = dropped
            if dropped:
                logger.warning(
                    "%s: dropped %d of %d %s examples whose response does not fit in max_length=%d "
                    "(with at least %d prompt tokens); raise task.max_length to keep them",
                    self.name,
                    dropped,
                    len(ds),
                    split,
                    max_length,
                    self.options["min_prompt_tokens"],
                )
            if not ids_list:
                raise TaskDataError(
                    f"task {self.name}: split {split!r} ({self.data_origin.get(split, 'in memory')}): all "
                    f"{len(ds)} examples were dropped because their responses do not fit in "
                    f"max_length={max_length}; raise task.max_length"
                )
            if self.options["packing"] and split == "train":
                columns = pack_examples(ids_list, label_list, max_length)
            else:
                columns = {
                    "input_ids": ids_list,
                    "attention_mask": [[1] * len(x) for x in ids_list],
                    "labels": label_list,
                }
            out[split] = datasets.Dataset.from_dict(columns)
        return datasets.DatasetDict(out)

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        return CausalLMCollator(pad_token_id(tokenizer))

    def make_compute_metrics(
        self, features: datasets.Dataset
    ) -> Callable[[EvalPrediction], dict[str, float]] | None:
        return None  # held-out loss comes from Trainer; perplexity from finalize_metrics

    def finalize_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Adds `<prefix>perplexity = exp(<prefix>loss)` for every eval loss (mean token NLL)."""
        out = dict(metrics)
        for key, value in metrics.items():
            if key.endswith("loss") and key.startswith(("eval", "test")):
                try:
                    out[key[: -len("loss")] + "perplexity"] = math.exp(value)
                except OverflowError:
                    out[key[: -len("loss")] + "perplexity"] = math.inf
        return out

    # ---- generation --------------------------------------------------------------------------
    def generation_rows(self, raw: datasets.Dataset | None) -> list[dict[str, Any]]:
        prompts = self.options["generation_prompts"]
        if isinstance(prompts, str):
            records = io.read_json_records(Path(prompts).expanduser(), self.name)
            return [self.instruction_row(r["instruction"], r.get("input"), r.get("output")) for r in records]
        if prompts:
            return [self.instruction_row(str(p)) for p in prompts]
        if raw is None:
            raise TaskDataError(
                f"task {self.name}: no raw split and no generation_prompts option to generate from"
            )
        return [dict(r) for r in raw.select(range(min(len(raw), self.options["num_generation_prompts"])))]

    def evaluate_generation(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        raw: datasets.Dataset,
        output_dir: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 8,
    ) -> dict[str, float]:
        """Greedy answers for a fixed prompt set, written to `<output_dir>/generations.jsonl`."""
        rows = self.generation_rows(raw)
        prompts = [self.prompt_ids(tokenizer, r) for r in rows]
        answers = generate_greedy(
            model, tokenizer, prompts, max_new_tokens, batch_size, self.options["repetition_penalty"]
        )
        new_tokens = [len(a) for a in answers]
        texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
        if output_dir is not None:
            path = Path(output_dir) / "generations.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for i, (row, prompt, text) in enumerate(zip(rows, prompts, texts, strict=True)):
                    messages = self.record_messages(row, with_response=False)
                    record = {
                        "id": i,
                        "prompt": tokenizer.decode(prompt),
                        "messages": messages,
                        "reference": self.reference(row),
                        "generation": text,
                    }
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return {
            "generation_samples": float(len(rows)),
            "generation_mean_new_tokens": float(sum(new_tokens) / max(len(new_tokens), 1)),
        }

    def instruction_row(self, instruction: str, input: str | None = None, output: str | None = None) -> dict:
        """A record in this task's own column names (Dolly: instruction/context/response)."""
        row = {self.instruction_field: instruction, self.output_field: output}
        if self.input_field:
            row[self.input_field] = input or ""
        return row

    def reference(self, row: Mapping[str, Any]) -> str | None:
        if row.get("messages"):
            last = row["messages"][-1]
            return last["content"] if last["role"] == "assistant" else None
        return row.get(self.output_field)


def check_messages(task: str, origin: str, split: str, row: str, messages: Any) -> None:
    where = f"task {task}: {origin} (split {split!r}) {row}"
    if not isinstance(messages, list) or not messages:
        raise TaskDataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise TaskDataError(f"{where}: message {j} must have 'role' and 'content' keys")
        if m["role"] not in ROLES:
            raise TaskDataError(f"{where}: message {j} has role {m['role']!r}; expected one of {list(ROLES)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise TaskDataError(f"{where}: no 'assistant' message, so there is no response to learn")


@register_task
class Alpaca(InstructTask):
    name = "instruct/alpaca"
    description = "Alpaca 52k instruction tuning (causal LM): held-out loss/perplexity, sample generations"
    hub_path = "tatsu-lab/alpaca"


@register_task
class Dolly(InstructTask):
    name = "instruct/dolly"
    description = "Dolly 15k instruction tuning (causal LM): held-out loss/perplexity, sample generations"
    hub_path = "databricks/databricks-dolly-15k"
    input_field = "context"
    output_field = "response"
