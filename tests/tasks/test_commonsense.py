"""Commonsense protocol: answer extraction on the real test files, generation-based accuracy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from moc_cli.tasks import DataSource, TaskDataError, get_task
from moc_cli.tasks.commonsense import (
    COMMONSENSE_TASKS,
    LLM_ADAPTERS_EVAL_PROMPT_NO_INPUT,
    extract_answer,
    response_text,
)

# shared/data/README.md: rows and answer counts of the test files present
TEST_SETS = {
    "ARC-Challenge": (1172, {"answer1": 266, "answer2": 311, "answer3": 310, "answer4": 285}),
    "ARC-Easy": (2376, {"answer1": 596, "answer2": 585, "answer3": 633, "answer4": 561, "answer5": 1}),
    "boolq": (3270, {"false": 1237, "true": 2033}),
    "openbookqa": (500, {"answer1": 138, "answer2": 126, "answer3": 132, "answer4": 104}),
    "piqa": (1838, {"solution1": 910, "solution2": 928}),
    "social_i_qa": (1954, {"answer1": 643, "answer2": 654, "answer3": 657}),
    "winogrande": (1267, {"option1": 628, "option2": 639}),
}


@pytest.mark.parametrize("name", sorted(TEST_SETS))
def test_extraction_recovers_every_gold_answer(data_dir: Path, name: str):
    task = get_task("commonsense/170k", {"test_dir": str(data_dir / "commonsense")})
    records = task.load_test_set(name)
    rows, counts = TEST_SETS[name]
    assert len(records) == rows
    assert dict(Counter(r["answer"] for r in records)) == counts
    # the reference outputs ("the correct answer is answer3") extract to the gold answer, every one
    assert [extract_answer(name, r["output"]) for r in records] == [r["answer"] for r in records]


def test_extraction_rules_match_the_protocol():
    assert extract_answer("boolq", "the correct answer is true, not false") == "true"
    assert extract_answer("boolq", "The correct answer is True") == ""  # case-sensitive, as in the protocol
    assert extract_answer("piqa", "solution2 then solution1") == "solution2"
    assert extract_answer("social_i_qa", "answer5") == "answer5"  # the shared 5-way pattern
    assert extract_answer("ARC-Easy", "answer12") == "answer1"  # first match, no word boundary
    assert extract_answer("hellaswag", "the correct answer is ending4") == "ending4"
    assert extract_answer("winogrande", "option3 option2") == "option2"
    assert extract_answer("openbookqa", "no idea") == ""
    assert response_text("prompt ### Response:\n answer ### Response: the correct answer is answer2 ") == (
        "the correct answer is answer2"
    )
    with pytest.raises(KeyError, match="unknown commonsense task 'arc'"):
        extract_answer("arc", "answer1")
    assert COMMONSENSE_TASKS == (
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Challenge",
        "ARC-Easy",
        "openbookqa",
    )


def test_training_format_loads_from_a_local_file(data_dir: Path, minilm_tokenizer):
    task = get_task("commonsense/170k")
    raw = task.load(DataSource(path=str(data_dir / "commonsense/boolq/train.json")))
    assert raw["train"].num_rows + raw["validation"].num_rows == 9427
    assert raw["validation"].num_rows == 120
    row = raw["validation"][0]
    ids, labels = task.encode(minilm_tokenizer, row, 256)
    trained = minilm_tokenizer.decode([t for t in labels if t != -100])
    assert trained == row["output"]  # "the correct answer is true|false"


def test_evaluate_generation_scores_by_extraction(
    data_dir: Path, tmp_path: Path, chat_tokenizer, tiny_causal_lm
):
    task = get_task(
        "commonsense/170k",
        {"eval_tasks": ["boolq", "piqa"], "test_dir": str(data_dir / "commonsense"), "max_eval_examples": 3},
    )
    out = task.evaluate_generation(
        tiny_causal_lm, chat_tokenizer, None, str(tmp_path), max_new_tokens=4, batch_size=2
    )
    assert set(out) == {"boolq_accuracy", "piqa_accuracy", "average_accuracy", "num_tasks"}
    for name in ("boolq", "piqa"):
        rows = [
            json.loads(x) for x in (tmp_path / "commonsense" / f"{name}.jsonl").read_text().split("\n") if x
        ]
        assert len(rows) == 3
        for r in rows:
            assert r["pred"] == extract_answer(name, r["output_pred"])
            assert r["flag"] == (r["pred"] == r["answer"])
        assert out[f"{name}_accuracy"] == sum(r["flag"] for r in rows) / 3
    assert out["average_accuracy"] == (out["boolq_accuracy"] + out["piqa_accuracy"]) / 2
    assert out["num_tasks"] == 2.0


def test_all_skips_absent_sets_but_a_named_one_must_exist(
    data_dir: Path, tmp_path: Path, chat_tokenizer, tiny_causal_lm
):
    (tmp_path / "boolq").mkdir()
    record = json.loads((data_dir / "commonsense/boolq/test.json").read_text())[0]
    (tmp_path / "boolq" / "test.json").write_text(json.dumps([record]))
    task = get_task("commonsense/170k", {"test_dir": str(tmp_path)})
    out = task.evaluate_generation(tiny_causal_lm, chat_tokenizer, None, None, max_new_tokens=2)
    assert out["num_tasks"] == 1.0 and set(out) == {"boolq_accuracy", "average_accuracy", "num_tasks"}
    named = get_task("commonsense/170k", {"test_dir": str(tmp_path), "eval_tasks": "hellaswag"})
    with pytest.raises(TaskDataError, match=r"test set 'hellaswag' not found at .*hellaswag/test\.json"):
        named.evaluate_generation(tiny_causal_lm, chat_tokenizer, None, None)


def test_llm_adapters_eval_prompt_is_verbatim(minilm_tokenizer):
    task = get_task("commonsense/170k", {"eval_prompt": "llm_adapters"})
    record = {"instruction": "Is the sky blue?", "answer": "true"}
    text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
        "\n\n                ### Instruction:\n                Is the sky blue?\n\n"
        "                ### Response:\n                "
    )
    assert LLM_ADAPTERS_EVAL_PROMPT_NO_INPUT.format(instruction="Is the sky blue?") == text
    assert task.eval_prompt_ids(minilm_tokenizer, record) == minilm_tokenizer(text)["input_ids"]
