"""Feature extraction: a network left in training mode is named (its BatchNorm moved and used batch
statistics, silently: features up to 1.79 away from eval mode's)."""

import warnings

import pytest
import torch
from torch import nn

from contrastkit.evaluation.features import extract_features, extract_features_from_batches


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Dropout(0.1))


def test_a_network_in_training_mode_is_warned_about_and_eval_mode_is_not() -> None:
    images = torch.randint(0, 256, (6, 3, 2, 2), dtype=torch.uint8)
    net = _net()
    with pytest.warns(UserWarning, match=r"in training mode with BatchNorm1d, Dropout: .*call \.eval\(\)"):
        extract_features(net, images, transform=lambda x: x.float() / 255)
    with pytest.warns(UserWarning, match="in training mode with BatchNorm1d"):
        extract_features_from_batches(
            [net], [(images, torch.zeros(6, dtype=torch.long))], transform=lambda x: x.float()
        )
    with warnings.catch_warnings(record=True) as caught:  # a bound method (model.features) is its module
        warnings.simplefilter("always")
        extract_features(net.forward, images, transform=lambda x: x.float())
    assert [w.filename for w in caught if "training mode" in str(w.message)] == [
        __file__
    ]  # the caller's line
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = extract_features(net, images, transform=lambda x: x.float() / 255)
        extract_features(
            nn.Flatten().train(), images, transform=lambda x: x.float()
        )  # nothing mode-dependent
    assert a.shape == (6, 8)
