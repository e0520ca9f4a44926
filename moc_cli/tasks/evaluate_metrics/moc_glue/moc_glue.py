"""GLUE metrics as a local `evaluate` metric: `evaluate.load(path, config_name)` works offline.

Locate the folder with `moc_cli.tasks.metrics.evaluate_module_path()`. The computation is the
project's own (scikit-learn/scipy), shared with the tasks' compute_metrics.
"""

import datasets
import evaluate

from moc_cli.tasks import metrics

_DESCRIPTION = (
    "GLUE metrics: matthews_correlation (cola), accuracy, f1 (mrpc, qqp), pearson/spearmanr (stsb)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (float scores for stsb).
    references: gold class ids (float scores for stsb).
Returns: a dict with the task's official GLUE metric(s).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MocGlue(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in metrics.GLUE_METRICS:
            raise KeyError(
                f"config_name must be one of {sorted(metrics.GLUE_METRICS)}, got {self.config_name!r}"
            )
        value = datasets.Value("float32" if self.config_name == "stsb" else "int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        return metrics.glue_metric(self.config_name, predictions, references)
