"""Instruction tuning: loss mask token by token (plain and chat templates), truncation, packing, generation."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import datasets
import pytest
import torch

from moc_cli.tasks import DataSource, TaskDataError, get_task
from moc_cli.tasks.instruct import IGNORE_INDEX

PLAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PLAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def seed_tasks(data_dir: Path) -> list[dict]:
    return read_jsonl(data_dir / "instruct/self_instruct_seed_tasks.jsonl")


def test_plain_template_mask_token_by_token(seed_tasks, minilm_tokenizer):
    tok = minilm_tokenizer
    assert not tok.chat_template and tok.bos_token_id is None and tok.eos_token_id is None
    row = seed_tasks[1]  # has an input
    assert row["input"] == "Night : Day :: Right : Left"
    prompt = ids(tok, PLAIN_WITH_INPUT.format(**row))
    response = ids(tok, row["output"])
    got_ids, got_labels = get_task("instruct/alpaca").encode(tok, row, 512)
    assert got_ids == prompt + response
    assert got_labels == [IGNORE_INDEX] * len(prompt) + response
    assert tok.decode([t for t in got_labels if t != IGNORE_INDEX]) == row["output"].lower()


def test_plain_template_without_input(data_dir: Path, minilm_tokenizer):
    tok = minilm_tokenizer
    row = read_jsonl(data_dir / "instruct/alpaca_eval.jsonl")[0]
    assert row["input"] == ""
    prompt = ids(tok, PLAIN_NO_INPUT.format(**row))
    got_ids, got_labels = get_task("instruct/alpaca").encode(tok, row, 1024)
    assert got_ids[: len(prompt)] == prompt
    assert got_labels == [IGNORE_INDEX] * len(prompt) + got_ids[len(prompt) :]
    assert get_task("instruct/alpaca").prompt_ids(tok, row) == prompt


def test_bos_and_eos_are_added_by_the_plain_template(seed_tasks, minilm_tokenizer):
    tok = minilm_tokenizer.__class__.from_pretrained(minilm_tokenizer.name_or_path)
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    row = seed_tasks[1]
    got_ids, got_labels = get_task("instruct/alpaca").encode(tok, row, 512)
    prompt = [tok.cls_token_id] + ids(tok, PLAIN_WITH_INPUT.format(**row))
    response = ids(tok, row["output"]) + [tok.sep_token_id]
    assert got_ids == prompt + response
    assert got_labels == [IGNORE_INDEX] * len(prompt) + response


def test_chat_template_mask_token_by_token(seed_tasks, chat_tokenizer):
    tok = chat_tokenizer
    row = seed_tasks[1]
    prompt = ids(
        tok, f"<|im_start|>user\n{row['instruction']}\n\n{row['input']}<|im_end|>\n<|im_start|>assistant\n"
    )
    response = ids(tok, f"{row['output']}<|im_end|>\n")
    assert response[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    got_ids, got_labels = get_task("instruct/alpaca").encode(tok, row, 512)
    assert got_ids == prompt + response
    assert got_labels == [IGNORE_INDEX] * len(prompt) + response
    assert get_task("instruct/alpaca").prompt_ids(tok, row) == prompt
    with pytest.raises(Exception, match="template='chat' but the tokenizer has no chat template"):
        get_task("instruct/alpaca", {"template": "chat"}).encode(
            tok.__class__.from_pretrained(tok.name_or_path), row, 512
        )
    # template: plain ignores the chat template
    plain_ids, _ = get_task("instruct/alpaca", {"template": "plain"}).encode(tok, row, 512)
    assert plain_ids == ids(tok, PLAIN_WITH_INPUT.format(**row) + row["output"])


def test_chat_messages_train_on_every_assistant_turn(chat_tokenizer):
    tok = chat_tokenizer
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine thanks"},
    ]
    got_ids, got_labels = get_task("demo/instruct").encode(tok, {"messages": messages}, 512)
    parts = [
        (
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("hello<|im_end|>\n", True),
        ("<|im_start|>user\nhow are you<|im_end|>\n<|im_start|>assistant\n", False),
        ("fine thanks<|im_end|>\n", True),
    ]
    want_ids = [t for text, _ in parts for t in ids(tok, text)]
    want_labels = [t if trained else IGNORE_INDEX for text, trained in parts for t in ids(tok, text)]
    assert got_ids == want_ids
    assert got_labels == want_labels


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response(chat_tokenizer):
    tok = chat_tokenizer
    row = {"instruction": "summarise", "input": " ".join(["word"] * 300), "output": "a short summary"}
    task = get_task("instruct/alpaca")
    full_ids, full_labels = task.encode(tok, row, 10_000)
    got_ids, got_labels = task.encode(tok, row, 64)
    assert len(got_ids) == 64
    assert got_ids == full_ids[-64:] and got_labels == full_labels[-64:]
    response = ids(tok, "a short summary<|im_end|>\n")
    assert got_labels[-len(response) :] == response
    assert all(t == IGNORE_INDEX for t in got_labels[: -len(response)])


def test_truncated_earlier_turn_becomes_context(chat_tokenizer):
    tok = chat_tokenizer
    messages = [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": " ".join(["once"] * 40)},
        {"role": "user", "content": "shorter please"},
        {"role": "assistant", "content": "the end"},
    ]
    task = get_task("demo/instruct")
    full_ids, full_labels = task.encode(tok, {"messages": messages}, 10_000)
    got_ids, got_labels = task.encode(tok, {"messages": messages}, 40)
    assert got_ids == full_ids[-40:]
    second_prompt = ids(tok, "<|im_start|>user\nshorter please<|im_end|>\n<|im_start|>assistant\n")
    final = ids(tok, "the end<|im_end|>\n")
    assert got_labels == [IGNORE_INDEX] * (40 - len(final)) + final  # the cut first answer is not trained
    assert got_ids[-len(final) - len(second_prompt) : -len(final)] == second_prompt
    assert full_labels.count(IGNORE_INDEX) < len(full_labels) - len(
        final
    )  # untruncated: both answers trained


def test_examples_whose_response_cannot_fit_are_dropped_and_counted(chat_tokenizer, caplog):
    tok = chat_tokenizer
    rows = [
        {"instruction": "say hi", "input": "", "output": "hi"},
        {"instruction": "essay", "input": "", "output": " ".join(["long"] * 200)},
        {"instruction": "say bye", "input": "", "output": "bye"},
    ]
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    task = get_task("instruct/alpaca")
    with caplog.at_level(logging.WARNING, logger="moc_cli.tasks.instruct"):
        feats = task.preprocess(raw, tok, 64)
    assert feats["train"].num_rows == 2 and task.dropped == {"train": 1}
    assert (
        "instruct/alpaca: dropped 1 of 3 train examples whose response does not fit in max_length=64"
        in caplog.text
    )
    # a response that fits only without the minimum prompt is dropped too (16 prompt tokens by default)
    out = get_task("instruct/alpaca").encode(
        tok, {"instruction": "x " * 40, "input": "", "output": "y " * 50}, 64
    )
    assert out is None
    with pytest.raises(TaskDataError, match="all 1 examples were dropped"):
        task.preprocess(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[1:2])}), tok, 64)


def test_packing_concatenates_whole_examples(seed_tasks, chat_tokenizer):
    tok = chat_tokenizer
    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(seed_tasks[:12]),
            "validation": datasets.Dataset.from_list(seed_tasks[12:14]),
        }
    )
    plain = get_task("instruct/alpaca").preprocess(raw, tok, 256)
    packed = get_task("instruct/alpaca", {"packing": True}).preprocess(raw, tok, 256)
    assert packed["train"].num_rows < plain["train"].num_rows
    assert all(len(x) <= 256 for x in packed["train"]["input_ids"])
    flat = lambda col: [t for row in col for t in row]  # noqa: E731
    assert flat(packed["train"]["input_ids"]) == flat(plain["train"]["input_ids"])
    assert flat(packed["train"]["labels"]) == flat(plain["train"]["labels"])
    assert packed["validation"]["input_ids"] == plain["validation"]["input_ids"]  # eval is never packed


def test_collator_pads_right_with_ignored_labels(chat_tokenizer):
    collate = get_task("instruct/alpaca").data_collator(chat_tokenizer)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    pad = chat_tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_perplexity_from_eval_loss():
    task = get_task("instruct/dolly")
    assert task.make_compute_metrics(None) is None
    out = task.finalize_metrics({"eval_loss": 2.0, "eval_runtime": 1.0, "epoch": 1.0})
    assert out == {"eval_loss": 2.0, "eval_runtime": 1.0, "epoch": 1.0, "eval_perplexity": math.exp(2.0)}


def test_dolly_columns_and_held_out_split(tmp_path: Path, chat_tokenizer, minilm_tokenizer):
    rows = [
        {
            "instruction": f"q{i}",
            "context": "ctx" if i % 2 else "",
            "response": f"a{i}",
            "category": "open_qa",
        }
        for i in range(50)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("instruct/dolly", {"validation_size": 10})
    raw = task.load(DataSource(path=str(tmp_path), seed=3))
    assert (raw["train"].num_rows, raw["validation"].num_rows) == (40, 10)
    assert raw["train"].column_names == ["instruction", "context", "response", "category"]
    again = get_task("instruct/dolly", {"validation_size": 10}).load(DataSource(path=str(tmp_path), seed=3))
    assert again["validation"]["instruction"] == raw["validation"]["instruction"]
    row = rows[1]
    got, _ = task.encode(minilm_tokenizer, row, 256)
    expected = PLAIN_WITH_INPUT.format(instruction="q1", input="ctx") + "a1"
    assert got == ids(minilm_tokenizer, expected)
    (tmp_path / "train.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(
        TaskDataError, match=r"missing column\(s\) \['response'\], unexpected column\(s\) \['output'\]"
    ):
        task.load(DataSource(path=str(tmp_path)))


def test_alpaca_file_gets_a_held_out_split(data_dir: Path):
    raw = get_task("instruct/alpaca").load(
        DataSource(path=str(data_dir / "instruct/self_instruct_seed_tasks.jsonl"))
    )
    assert (raw["train"].num_rows, raw["validation"].num_rows) == (171, 4)  # 2 % of 175, rounded up


def test_bad_messages_are_reported(tmp_path: Path):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(
        TaskDataError,
        match=r"line 1: message 1 has role 'bot'; expected one of \['system', 'user', 'assistant'\]",
    ):
        get_task("instruct/alpaca").load(DataSource(path=str(tmp_path)))


def test_null_response_is_reported(tmp_path: Path):
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"instruction": "q", "input": "", "output": None}) + "\n"
    )
    with pytest.raises(
        TaskDataError, match=r"line 1: field 'output' has no value; expected a string in every record"
    ):
        get_task("instruct/alpaca").load(DataSource(path=str(tmp_path)))


def test_evaluate_generation_writes_jsonl(tmp_path: Path, chat_tokenizer, tiny_causal_lm):
    task = get_task(
        "instruct/alpaca",
        {"generation_prompts": ["name a colour", "count to three", "say hello to the world"]},
    )
    out = task.evaluate_generation(
        tiny_causal_lm, chat_tokenizer, None, str(tmp_path), max_new_tokens=5, batch_size=2
    )
    lines = read_jsonl(tmp_path / "generations.jsonl")
    assert out["generation_samples"] == 3.0 and len(lines) == 3
    assert set(lines[0]) == {"id", "prompt", "messages", "reference", "generation"}
    assert lines[2]["messages"] == [{"role": "user", "content": "say hello to the world"}]
    # left-padded batched greedy decoding equals unbatched greedy decoding
    prompt = task.prompt_ids(chat_tokenizer, task.instruction_row("name a colour"))
    with torch.no_grad():
        ref = tiny_causal_lm.generate(
            torch.tensor([prompt]),
            max_new_tokens=5,
            do_sample=False,
            pad_token_id=chat_tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
    assert lines[0]["generation"] == chat_tokenizer.decode(ref, skip_special_tokens=True).strip()
    assert out["generation_mean_new_tokens"] == 5.0


def test_repetition_penalty_keeps_greedy_replies_off_seen_tokens(chat_tokenizer, tiny_causal_lm):
    from moc_cli.generation import generate_greedy

    prompt = chat_tokenizer("say something new", add_special_tokens=False)["input_ids"]
    loop_token = prompt[0]
    bonus = torch.zeros(len(chat_tokenizer))
    bonus[loop_token] = 50.0  # a model that loops: one token of the prompt always wins
    handle = tiny_causal_lm.lm_head.register_forward_hook(lambda module, args, out: out + bonus)
    try:
        plain, penalised = (
            generate_greedy(tiny_causal_lm, chat_tokenizer, [prompt], 12, 1, repetition_penalty=p)[0]
            for p in (1.0, 1000.0)
        )
    finally:
        handle.remove()
    assert plain == [loop_token] * 12
    # with a prohibitive penalty every new token is one neither the prompt nor the reply has used
    assert len(penalised) == 12 and len(set(prompt + penalised)) == len(set(prompt)) + 12


def test_instruct_samples_use_the_repetition_penalty_option(tmp_path: Path, chat_tokenizer, tiny_causal_lm):
    from moc_cli.generation import generate_greedy

    task = get_task(
        "instruct/alpaca", {"generation_prompts": ["name a colour"], "repetition_penalty": 1000.0}
    )
    task.evaluate_generation(tiny_causal_lm, chat_tokenizer, None, str(tmp_path), max_new_tokens=6)
    prompt = task.prompt_ids(chat_tokenizer, task.instruction_row("name a colour"))
    expected = generate_greedy(tiny_causal_lm, chat_tokenizer, [prompt], 6, 1, repetition_penalty=1000.0)[0]
    assert (
        read_jsonl(tmp_path / "generations.jsonl")[0]["generation"]
        == chat_tokenizer.decode(expected, skip_special_tokens=True).strip()
    )


@pytest.mark.parametrize("value", [0.9, "high", True])
def test_repetition_penalty_option_is_checked(value):
    from moc_cli.tasks import TaskOptionError

    with pytest.raises(TaskOptionError) as err:
        get_task("instruct/alpaca", {"repetition_penalty": value})
    assert str(err.value) == (
        "task instruct/alpaca: option repetition_penalty must be a number >= 1.0 (1.0: no penalty, "
        f"1.1-1.3 typical), got {value!r}"
    )
