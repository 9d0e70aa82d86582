"""The error classes: every input error is a ContrastkitError, and the data, argument and shape errors are
ValueErrors, so one ``except ValueError`` around library calls catches a mistake whichever piece sees it."""

from __future__ import annotations

import pytest
import torch

from contrastkit.errors import ConfigError, ContrastkitError, DataError, ShapeError, UndecodableImageError
from contrastkit.evaluation.knn import knn_accuracy
from contrastkit.negatives import InBatchNegatives


@pytest.mark.parametrize("cls", [DataError, UndecodableImageError, ConfigError, ShapeError])
def test_input_errors_are_value_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, ContrastkitError) and issubclass(cls, ValueError)


def test_float_labels_raise_a_value_error_in_evaluation_and_in_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    float_labels = torch.arange(8, dtype=torch.float32) % 2
    with pytest.raises(ValueError, match="integer"):
        knn_accuracy(feats, float_labels, feats, float_labels, k=3)
    with pytest.raises(ValueError, match="integer"):
        InBatchNegatives()(feats, feats, labels=float_labels)
