"""Multiple-choice accuracy: share of predicted answer indices equal to the label."""

import datasets
import evaluate

from components.maths.metrics import mc_accuracy

_INPUTS = """
Args:
    predictions: list of predicted answer indices (int).
    references: list of correct answer indices (int).
Returns:
    accuracy: share of matches, 0..1.
Example:
    >>> m.compute(predictions=[0, 2, 1], references=[0, 1, 1])
    {'accuracy': 0.6666666666666666}
"""


class McAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy of multiple-choice answers (TruthfulQA MC1, HellaSwag), 0..1.",
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references):
        return {"accuracy": mc_accuracy(predictions, references)}
