"""SQuAD v1.1 exact match and token F1 (percent), max over the gold answers of each question."""

import datasets
import evaluate

from components.maths.metrics import squad_scores

_DESCRIPTION = """Exact match and token-overlap F1 after SQuAD v1.1 normalisation (lower case, no
punctuation, no articles a/an/the, single spaces); each prediction is scored against its best
gold answer. Both are in percent (0..100)."""

_INPUTS = """
Args:
    predictions: list of predicted answer strings.
    references: list of lists of gold answer strings (one list per question).
Returns:
    exact_match: percent of predictions equal to a gold answer after normalisation.
    f1: mean best token F1, in percent.
Example:
    >>> m.compute(predictions=["Eiffel Tower"], references=[["the Eiffel Tower"]])
    {'exact_match': 100.0, 'f1': 100.0}
"""


class SquadEmF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, 2016.",
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        return squad_scores(predictions, references)
