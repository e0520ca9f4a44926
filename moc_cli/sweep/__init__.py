"""`moc sweep`: hyperparameter search on an Optuna study; every trial is a normal `moc train` run.

`space` parses `key=kind:...` items into Optuna distributions (no Optuna import); `study` opens the
study in its storage, runs trials through the training runner and reports them.
"""

from moc_cli.sweep.space import SearchParam, SweepSpace, parse_sweep_items

__all__ = ["SearchParam", "SweepSpace", "parse_sweep_items"]
