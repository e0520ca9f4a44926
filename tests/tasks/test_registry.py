from __future__ import annotations

import pytest

from moc_cli.tasks import TaskOptionError, get_task, list_tasks
from moc_cli.tasks.registry import TASK_MODULES, UnknownTaskError, get_task_class

EXPECTED = [
    "commonsense/170k",
    "demo/instruct",
    "demo/sentiment",
    "glue/cola",
    "glue/mnli",
    "glue/mrpc",
    "glue/qnli",
    "glue/qqp",
    "glue/rte",
    "glue/sst2",
    "glue/stsb",
    "glue/wnli",
    "instruct/alpaca",
    "instruct/chat",
    "instruct/dolly",
    "superglue/boolq",
    "superglue/cb",
    "superglue/copa",
    "superglue/multirc",
    "superglue/record",
    "superglue/rte",
    "superglue/wic",
    "superglue/wsc",
]


def test_list_tasks_is_complete_and_sorted():
    # Other test modules register throw-away tasks in the same process; only shipped ones count here.
    shipped = [name for name in list_tasks() if get_task_class(name).__module__.startswith("moc_cli.tasks.")]
    assert shipped == EXPECTED
    assert TASK_MODULES == ("glue", "superglue", "instruct", "commonsense", "demo", "chat")


def test_unknown_task_suggests_and_lists():
    with pytest.raises(UnknownTaskError) as err:
        get_task("glue/sst")
    msg = str(err.value)
    assert msg.startswith("unknown task 'glue/sst' (did you mean 'glue/sst2'")
    assert "Known tasks: commonsense/170k, demo/instruct" in msg
    assert isinstance(err.value, KeyError)


def test_unknown_task_without_close_match():
    with pytest.raises(UnknownTaskError, match=r"^unknown task 'zzz'\. Known tasks: "):
        get_task("zzz")


def test_every_task_declares_the_contract():
    for name in EXPECTED:
        cls = get_task_class(name)
        task = get_task(name)
        assert cls.name == name
        assert task.description and "\n" not in task.description
        assert task.kind in ("seq_cls", "regression", "multiple_choice", "causal_lm")
        assert isinstance(task.main_metric, str)
        if task.kind in ("seq_cls", "multiple_choice"):
            assert task.num_labels == len(task.label_names) >= 2
    assert get_task("glue/stsb").num_labels == 1
    assert get_task("glue/mnli").eval_splits == ["validation_matched", "validation_mismatched"]
    assert get_task("glue/cola").id2label == {0: "unacceptable", 1: "acceptable"}
    assert get_task("superglue/copa").kind == "multiple_choice"


def test_task_options_are_checked():
    task = get_task("instruct/alpaca", {"packing": True})
    assert task.options["packing"] is True and task.options["template"] == "auto"
    with pytest.raises(
        TaskOptionError, match=r"task 'instruct/alpaca': unknown option\(s\) pack; accepted options: "
    ):
        get_task("instruct/alpaca", {"pack": True})
    with pytest.raises(TaskOptionError, match="unknown eval_tasks \\['arc'\\]"):
        get_task("commonsense/170k", {"eval_tasks": ["arc"]})
