"""Shared setup of the MoC tuner tests (tiny models live in `moc_tuner_testkit`)."""

import moc_tuner_testkit  # noqa: F401  (offline env, threads, registration)
