"""The `moc` app: help texts, argument handling, exit codes and the inspect commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from cli_helpers import invoke, make_run_folder

from moc_cli.cli.app import app
from moc_cli.config import RunConfig
from moc_cli.testing import TINY_RECIPE, write_yaml
from moc_cli.training.errors import RunInterrupted, RunSetupError

REPO_ROOT = Path(__file__).resolve().parents[2]
OWN_COMMANDS = ["train", "eval", "ls", "cat", "validate", "env", "schema"]
EXPORT_AND_BENCH_COMMANDS = ["merge-export", "predict", "bench"]


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", OWN_COMMANDS + EXPORT_AND_BENCH_COMMANDS)
def test_help_of_every_command_has_a_runnable_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout
    assert f"moc {command}" in result.stdout.split("Examples:")[1]


def test_every_command_is_registered() -> None:
    assert [c.name for c in app.registered_commands] == [
        "train",
        "eval",
        "ls",
        "cat",
        "validate",
        "env",
        "schema",
        "sweep",
        "merge-export",
        "predict",
        "bench",
    ]


def test_root_help_lists_commands_and_no_args_shows_usage() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in OWN_COMMANDS:
        assert command in result.stdout
    assert invoke().exit_code == 2  # no_args_is_help exits 2 (click convention)


def test_help_option_short_form() -> None:
    assert invoke("ls", "-h").exit_code == 0


# --- train -----------------------------------------------------------------------------------


def test_train_dry_run_prints_provenance_and_does_not_train(recipes_root: Path, runner) -> None:
    result = invoke(
        "train",
        "--recipe",
        "glue/sst2",
        "method.r=4",
        "--dry-run",
        "-o",
        "123",
        "--overwrite",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert runner.calls == []
    out = result.stdout
    recipe = recipes_root / "glue" / "sst2.yaml"
    assert out.startswith("# moc train --dry-run: resolved config for glue/sst2 (nothing was run)\n")
    lines = out.splitlines()

    def line(prefix: str) -> str:
        (found,) = [x for x in lines if x.startswith(prefix)]
        return found

    assert line("  r: 4").endswith("# from override")
    assert line("  learning_rate: 0.001").endswith(f"# from recipe:{recipe}")
    assert line("  weight_decay: 0.0").endswith("# from default")
    assert line("  dir: '123'").endswith("# from override")  # --output-dir stays a string
    assert line("  overwrite: true").endswith("# from override")
    assert line("  progress: plain").endswith("# from override")
    cfg = RunConfig.model_validate(yaml.safe_load(out))
    assert cfg.method.r == 4 and cfg.output.dir == "123"


def test_train_calls_the_runner_with_config_provenance_and_resume(
    recipes_root: Path, runner, tmp_path: Path
) -> None:
    user = write_yaml(tmp_path / "mine.yaml", {"training": {"max_steps": 7}})
    result = invoke(
        "train", "-r", "glue/sst2", "-c", str(user), "method.name=lora", "method.r=2", "--resume", "auto"
    )
    assert result.exit_code == 0, result.output
    ((kind, (cfg, prov, resume)),) = runner.calls
    assert kind == "train"
    assert cfg.method.name == "lora" and cfg.method.r == 2
    assert cfg.training.max_steps == 7
    assert prov["training.max_steps"] == f"file:{user}"
    assert prov["method.r"] == "override"
    assert resume == "auto"
    # The runner's summary names the folder; the CLI adds only the next commands.
    assert (
        result.stdout.splitlines()[-1]
        == f"next: moc eval {runner.run_dir}   |   moc merge-export {runner.run_dir}"
    )


def test_train_resume_path(recipes_root: Path, runner, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    assert invoke("train", "-r", "glue/sst2", "--resume", str(checkpoint)).exit_code == 0
    assert runner.calls[0][1][2] == str(checkpoint)
    result = invoke("train", "-r", "glue/sst2", "--resume", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert (
        f"--resume: checkpoint directory not found: {tmp_path / 'nope'}; use `auto` or a path"
        in result.stderr
    )
    assert len(runner.calls) == 1


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["training.learning_rat=1e-4"],
            [
                "invalid config (1 error):",
                "training.learning_rat: unknown key; did you mean 'learning_rate'? [from override]",
            ],
        ),
        (
            ["training.per_device_train_batch_size=big"],
            [
                "training.per_device_train_batch_size: Input should be a valid integer",
                "(got 'big') [from override]",
            ],
        ),
        (
            ["model.dtype=bf16"],
            [
                "model.dtype: 'bf16' is not allowed; expected one of: float32, bfloat16, float16, auto; did you mean 'bfloat16'?"
            ],
        ),
        (
            ["foo", "method.varient=ffn", "output.progress=bars"],
            [
                "invalid config (3 errors):",
                "  - foo: override must look like key.path=value (or ~key.path to reset a key)",
                "  - method.varient: unknown key for method 'moc'; did you mean 'variant'? [from override]",
                "  - output.progress: 'bars' is not allowed; expected one of: auto, bar, plain, none; did you mean 'bar'?",
            ],
        ),
    ],
)
def test_train_config_errors_exit_2_before_the_runner(recipes_root: Path, runner, args, fragments) -> None:
    result = invoke("train", "--recipe", "glue/sst2", *args)
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr
    assert runner.calls == []


def test_train_missing_recipe_suggests(recipes_root: Path, runner) -> None:
    result = invoke("train", "--recipe", "glue/sst")
    assert result.exit_code == 2
    assert (
        "--recipe: unknown recipe 'glue/sst'; run `moc ls` to list recipes; did you mean 'glue/sst2'?"
        in result.stderr
    )


def test_train_missing_config_file(recipes_root: Path, runner, tmp_path: Path) -> None:
    result = invoke("train", "--recipe", "glue/sst2", "--config", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2
    assert f"--config: file not found: {tmp_path / 'absent.yaml'}" in result.stderr


def test_train_needs_recipe_or_config(runner) -> None:
    result = invoke("train", "method.r=4")
    assert result.exit_code == 2
    assert "error: give --recipe NAME (see `moc ls`) or --config FILE" in result.stderr


def test_train_preflight_unknown_task(recipes_root: Path, runner) -> None:
    result = invoke("train", "--recipe", "glue/sst2", "task.name=glue/sst3")
    assert result.exit_code == 2
    assert "task.name: unknown task 'glue/sst3'" in result.stderr
    assert "did you mean 'glue/sst2'? [from override]" in result.stderr
    assert runner.calls == []


def test_train_runtime_failure_exits_1_with_one_line(recipes_root: Path, runner) -> None:
    runner.raise_exc = RuntimeError("CUDA out of memory\nlong details")
    result = invoke("train", "--recipe", "glue/sst2")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: training failed: RuntimeError: CUDA out of memory (run `moc -v ...` for the traceback)\n"
    )
    verbose = invoke("-v", "train", "--recipe", "glue/sst2")
    assert verbose.exit_code == 1
    assert "Traceback (most recent call last)" in verbose.stderr


def test_train_setup_error_from_runner_exits_2(recipes_root: Path, runner) -> None:
    runner.raise_exc = RunSetupError("run directory runs/x is not empty; pass --overwrite", key="output.dir")
    result = invoke("train", "--recipe", "glue/sst2")
    assert result.exit_code == 2
    assert "  - output.dir: run directory runs/x is not empty; pass --overwrite" in result.stderr


def test_train_ctrl_c_exits_130(recipes_root: Path, runner) -> None:
    runner.raise_exc = RunInterrupted("runs/x/checkpoints/checkpoint-3")
    result = invoke("train", "--recipe", "glue/sst2")
    assert result.exit_code == 130
    assert result.stderr == (
        "training interrupted (Ctrl-C); checkpoint saved at runs/x/checkpoints/checkpoint-3; "
        "continue with the same command plus `--resume auto`\n"
    )
    runner.raise_exc = KeyboardInterrupt()
    assert invoke("train", "--recipe", "glue/sst2").exit_code == 130


def test_dry_run_imports_nothing_heavy(tmp_path: Path) -> None:
    """`python -m moc_cli train --dry-run` resolves the config without loading models or data code."""
    recipe = write_yaml(tmp_path / "r.yaml", TINY_RECIPE)
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["moc", "train", "--recipe", {str(recipe)!r}, "--dry-run"]
        try:
            runpy.run_module("moc_cli", run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        heavy = ["transformers.models.bert", "transformers.models.roberta", "transformers.trainer",
                 "datasets", "moc_cli.training.runner", "moc_cli.models"]
        print("LOADED=" + ",".join(m for m in heavy if m in sys.modules))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "# from recipe:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "LOADED="


# --- eval ------------------------------------------------------------------------------------


def test_eval_prints_a_metrics_table(runner, tmp_path: Path) -> None:
    # A run folder: `moc eval` refuses other folders before anything loads.
    run_dir = make_run_folder(tmp_path / "run")
    result = invoke("eval", str(run_dir), "--split", "test", "data.max_test_samples=20")
    assert result.exit_code == 0, result.output
    assert runner.calls == [("eval", (run_dir, "test", ["data.max_test_samples=20"]))]
    assert result.stdout.splitlines()[0] == f"{run_dir}  split: test"
    rows = [line for line in result.stdout.splitlines() if "accuracy" in line or "eval_loss" in line]
    assert len(rows) == 2
    assert "0.8750" in rows[0] and "0.3125" in rows[1]


def test_eval_json_and_nested_results(runner, tmp_path: Path) -> None:
    make_run_folder(tmp_path)
    runner.metrics = {"validation": {"accuracy": 0.5}, "test": {"accuracy": 0.25}}
    result = invoke("eval", str(tmp_path), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == runner.metrics
    table = invoke("eval", str(tmp_path))
    assert "validation/accuracy" in table.stdout and "0.5000" in table.stdout


def test_eval_errors(runner, tmp_path: Path) -> None:
    missing = invoke("eval", str(tmp_path / "nope"))
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr
    malformed = invoke("eval", str(tmp_path), "split")
    assert malformed.exit_code == 2
    assert "split: override must look like key.path=value" in malformed.stderr
    assert runner.calls == []
    make_run_folder(tmp_path)
    runner.raise_exc = FileNotFoundError("no adapter_config.json in run/adapter")
    failed = invoke("eval", str(tmp_path))
    assert failed.exit_code == 1
    assert failed.stderr.startswith(
        "error: evaluation failed: FileNotFoundError: no adapter_config.json in run/adapter"
    )


# --- ls, cat, validate, env, schema -----------------------------------------------------------


def test_ls_groups_by_suite(recipes_root: Path) -> None:
    result = invoke("ls")
    assert result.exit_code == 0
    assert result.stdout == (
        "demo:\n"
        "  demo/sentiment  Demo sentiment.\n"
        "\n"
        "glue:\n"
        "  glue/cola       CoLA.\n"
        "  glue/sst2       Tiny test recipe for SST-2.\n"
    )


def test_ls_lists_the_shipped_recipes() -> None:
    from moc_cli.config import list_recipes

    result = invoke("ls")
    assert result.exit_code == 0
    for name in list_recipes():
        assert f"  {name}" in result.stdout


def test_cat_resolves_with_provenance(recipes_root: Path) -> None:
    result = invoke("cat", "glue/sst2", "training.max_steps=3")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["training"]["max_steps"] == 3 and data["task"]["name"] == "glue/sst2"
    assert f"# from recipe:{recipes_root / 'glue' / 'sst2.yaml'}" in result.stdout
    assert [x for x in result.stdout.splitlines() if x.startswith("  max_steps: 3")][0].endswith(
        "# from override"
    )
    bad = invoke("cat", "glue/sst")
    assert bad.exit_code == 2 and "did you mean 'glue/sst2'?" in bad.stderr


def test_validate_ok_and_failures(recipes_root: Path, tmp_path: Path) -> None:
    ok = invoke("validate", "glue/sst2")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "OK: glue/sst2 (task glue/sst2, model FacebookAI/roberta-base, method moc)\n"

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    result = invoke("validate", "glue/sst2", f"model.name_or_path={model_dir}", "task.options.packing=true")
    assert result.exit_code == 2
    assert (
        f"  - model.name_or_path: {model_dir} has no config.json; point to a directory written by save_pretrained [from override]"
        in result.stderr
    )
    assert "  - task.options.packing: unknown option for task 'glue/sst2'" in result.stderr

    (model_dir / "config.json").write_text("{}", encoding="utf-8")
    recipe = write_yaml(tmp_path / "local.yaml", {**TINY_RECIPE, "model": {"name_or_path": str(model_dir)}})
    assert invoke("validate", str(recipe)).exit_code == 0

    missing = invoke("validate", "glue/sst2", "data.files.train=/nonexistent/train.jsonl")
    assert missing.exit_code == 2
    assert (
        "data.files.train: no such file or directory: /nonexistent/train.jsonl [from override]"
        in missing.stderr
    )


def test_env_reports_versions() -> None:
    import importlib.metadata

    result = invoke("env", "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    for dist in ("torch", "transformers", "peft", "accelerate", "datasets"):
        assert info[dist] == importlib.metadata.version(dist)
    assert info["python"].startswith(sys.version.split()[0])
    assert info["cuda"] and info["mps"]
    text = invoke("env")
    assert text.exit_code == 0 and "transformers" in text.stdout and "moc_cli git" in text.stdout


def test_schema_lists_fields_with_type_default_and_help() -> None:
    full = invoke("schema")
    assert full.exit_code == 0
    assert "training.learning_rate: float = 0.0003\n    Peak learning rate (AdamW).\n" in full.stdout
    assert "model.name_or_path: str = required" in full.stdout
    field = invoke("schema", "--field", "method.variant")
    assert (
        field.stdout.splitlines()[0]
        == "method.variant [moc]: ffn|attn|both-separate|both-shared|block = 'both-shared'"
    )
    section = invoke("schema", "-f", "output")
    assert section.stdout.splitlines()[0].startswith("output  (section)")
    assert "output.progress: auto|bar|plain|none = 'auto'" in section.stdout
    bad = invoke("schema", "--field", "trainng.optim")
    assert bad.exit_code == 2
    assert "--field: unknown key 'trainng.optim'; did you mean 'training.optim'?" in bad.stderr


def test_main_entry_point_runs_the_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moc_cli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["moc", "schema", "--field", "seed"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("seed: int = 42\n")


def test_main_destroys_the_process_group_before_exit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Left to interpreter shutdown, a gloo group can abort the process after a clean exit
    # (seen on an interrupted 2-rank run: exit code -6 instead of 130).
    import torch.distributed as dist

    from moc_cli.cli.app import main

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    monkeypatch.setattr(sys, "argv", ["moc", "schema", "--field", "seed"])
    try:
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_validate_pkg_uris(recipes_root: Path) -> None:
    missing = invoke("validate", "glue/sst2", "model.name_or_path=pkg://no-such-asset-dist/x/model")
    assert missing.exit_code == 2
    assert "model.name_or_path: asset package 'no-such-asset-dist' is not installed" in missing.stderr
    assert "install it with: pip install" in missing.stderr
    bad_uri = invoke("validate", "glue/sst2", "model.name_or_path=pkg://only-dist")
    assert bad_uri.exit_code == 2 and "incomplete pkg:// URI" in bad_uri.stderr


def test_offline_flag_sets_hf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert invoke("--offline", "schema", "-f", "seed").exit_code == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
