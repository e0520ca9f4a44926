"""Commonsense reasoning, LLM-Adapters protocol: train on commonsense_170k, test on 8 sets by generation.

Training records are {instruction, input, output, answer} (output like "the correct answer is
answer2"). Evaluation generates greedily for each test question and extracts the answer with the
first match of the dataset's pattern (`commonsense_evaluate.py`'s extract_answer); accuracy is
exact string equality with the record's `answer`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from moc_cli.generation import generate_greedy
from moc_cli.tasks import io
from moc_cli.tasks.base import DataSource, TaskDataError, TaskOptionError
from moc_cli.tasks.instruct import InstructTask
from moc_cli.tasks.registry import register_task

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

COMMONSENSE_TASKS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Challenge",
    "ARC-Easy",
    "openbookqa",
)
_CHOICE5 = r"answer1|answer2|answer3|answer4|answer5"
ANSWER_PATTERNS: dict[str, str] = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": _CHOICE5,
    "ARC-Challenge": _CHOICE5,
    "ARC-Easy": _CHOICE5,
    "openbookqa": _CHOICE5,
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}

# The evaluation prompt of commonsense_evaluate.py, byte for byte (its indentation included).
LLM_ADAPTERS_EVAL_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "                ### Instruction:\n                {instruction}\n\n"
    "                ### Input:\n                {input}\n\n"
    "                ### Response:\n                "
)
LLM_ADAPTERS_EVAL_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n"
    "                ### Instruction:\n                {instruction}\n\n"
    "                ### Response:\n                "
)
RESPONSE_MARKER = "### Response:"


def extract_answer(task: str, text: str) -> str:
    """First match of the task's answer pattern in the generated text, or "" (counted wrong)."""
    if task not in ANSWER_PATTERNS:
        raise KeyError(f"unknown commonsense task {task!r}; expected one of {list(COMMONSENSE_TASKS)}")
    found = re.findall(ANSWER_PATTERNS[task], text.strip())
    return found[0] if found else ""


def response_text(decoded: str) -> str:
    """The text after the last "### Response:" (as the protocol splits its decoded output)."""
    return decoded.split(RESPONSE_MARKER)[-1].strip()


def default_test_dir() -> Path:
    shared = os.environ.get("MOC_SHARED_DIR")
    return Path(shared) / "data" / "commonsense" if shared else Path("../shared/data/commonsense")


@register_task
class Commonsense170k(InstructTask):
    name = "commonsense/170k"
    description = "Commonsense reasoning (LLM-Adapters 170k): accuracy on 8 test sets by generation"
    hub_path = None  # commonsense_170k.json is distributed with LLM-Adapters; point data.path at it
    main_metric = "loss"
    option_defaults: ClassVar[dict[str, Any]] = {
        **InstructTask.option_defaults,
        "validation_size": 120,  # LLM-Adapters holds out 120 training examples
        "eval_tasks": "all",  # "all", one name, or a list of names from COMMONSENSE_TASKS
        "test_dir": None,  # folder of <task>/test.json; default: data.path folder, else $MOC_SHARED_DIR/data/commonsense
        "eval_prompt": "train",  # "train": the training rendering; "llm_adapters": the protocol's verbatim prompt
        "max_eval_examples": None,  # cap per test set (smoke runs); None evaluates everything
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._source_dir: Path | None = None

    def check_options(self) -> None:
        super().check_options()
        self.eval_task_names()
        if self.options["eval_prompt"] not in ("train", "llm_adapters"):
            raise TaskOptionError(
                f"task {self.name}: option eval_prompt must be 'train' or 'llm_adapters', "
                f"got {self.options['eval_prompt']!r}"
            )

    def eval_task_names(self) -> list[str]:
        value = self.options["eval_tasks"]
        names = (
            list(COMMONSENSE_TASKS)
            if value in (None, "all")
            else [value]
            if isinstance(value, str)
            else list(value)
        )
        unknown = [n for n in names if n not in COMMONSENSE_TASKS]
        if unknown:
            raise TaskOptionError(
                f"task {self.name}: unknown eval_tasks {unknown}; choose 'all' or from {list(COMMONSENSE_TASKS)}"
            )
        return names

    def load(self, source: DataSource) -> datasets.DatasetDict:
        if source.path and Path(source.path).expanduser().is_dir():
            self._source_dir = Path(source.path).expanduser()
        return super().load(source)

    def test_dir(self) -> Path:
        if self.options["test_dir"]:
            return Path(self.options["test_dir"]).expanduser()
        if self._source_dir is not None and any((self._source_dir / t).is_dir() for t in COMMONSENSE_TASKS):
            return self._source_dir
        return default_test_dir()

    def load_test_set(self, task: str) -> list[dict[str, Any]]:
        path = self.test_dir() / task / "test.json"
        if not path.is_file():
            raise TaskDataError(
                f"task {self.name}: test set {task!r} not found at {path}; set task option test_dir to a folder "
                "of <task>/test.json files (LLM-Adapters dataset/ layout)"
            )
        records = io.read_json_records(path, self.name)
        for i, r in enumerate(records):
            missing = [k for k in ("instruction", "answer") if k not in r]
            if missing:
                raise TaskDataError(
                    f"task {self.name}: {path}: record {i} lacks {missing}; expected keys instruction, input, "
                    "output, answer"
                )
        if not records:
            raise TaskDataError(f"task {self.name}: split 'test' is empty: {path} has no records")
        limit = self.options["max_eval_examples"]
        return records[:limit] if limit else records

    def eval_prompt_ids(self, tokenizer: PreTrainedTokenizerBase, record: dict[str, Any]) -> list[int]:
        if self.options["eval_prompt"] == "llm_adapters":
            # the protocol passes only the instruction; tokenizer(...) adds BOS as in the original script
            text = LLM_ADAPTERS_EVAL_PROMPT_NO_INPUT.format(instruction=record["instruction"])
            return list(tokenizer(text)["input_ids"])
        row = self.instruction_row(record["instruction"])
        return self.prompt_ids(tokenizer, row)

    def evaluate_generation(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        raw: datasets.Dataset | None = None,
        output_dir: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 8,
    ) -> dict[str, float]:
        """Accuracy per test set (`<task>_accuracy`) and their mean (`average_accuracy`).

        With eval_tasks "all", test sets whose file is absent are skipped with a warning and
        `num_tasks` says how many were averaged; a test set named explicitly must exist.
        """
        names = self.eval_task_names()
        explicit = self.options["eval_tasks"] not in (None, "all")
        results: dict[str, float] = {}
        for task in names:
            try:
                records = self.load_test_set(task)
            except TaskDataError:
                if explicit:
                    raise
                logger.warning(
                    "%s: skipping %s: no %s", self.name, task, self.test_dir() / task / "test.json"
                )
                continue
            prompts = [self.eval_prompt_ids(tokenizer, r) for r in records]
            generated = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
            correct = 0
            rows = []
            for record, new in zip(records, generated, strict=True):
                output = response_text(tokenizer.decode(new, skip_special_tokens=True))
                pred = extract_answer(task, output)
                flag = pred == record["answer"]
                correct += flag
                rows.append({**record, "output_pred": output, "pred": pred, "flag": flag})
            results[f"{task}_accuracy"] = correct / len(records)
            if output_dir is not None:
                path = Path(output_dir) / "commonsense" / f"{task}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if not results:
            raise TaskDataError(
                f"task {self.name}: no commonsense test sets found under {self.test_dir()}; set task option test_dir"
            )
        accs = [v for k, v in results.items() if k.endswith("_accuracy")]
        results["average_accuracy"] = sum(accs) / len(accs)
        results["num_tasks"] = float(len(accs))
        return results
