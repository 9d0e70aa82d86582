"""AudioCNN: any clip length from 0.1 s to 2.3 s, feature_dim, and a step through the shared learner."""

from __future__ import annotations

import pytest
import torch

from contrastkit.encoders import ContrastiveModel, ProjectionHead
from contrastkit.encoders.audio import AudioCNN
from contrastkit.errors import ConfigError
from contrastkit.negatives import InBatchNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import CosineSimilarity
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.views.audio import AudioViews, LogMel


@pytest.mark.parametrize("seconds", [0.1, 1.0, 2.3])
def test_any_clip_length(seconds: float) -> None:
    lm = LogMel()
    x = lm(torch.randn(2, 1, round(8000 * seconds)))
    enc = AudioCNN(width=4)
    assert enc(x).shape == (2, enc.feature_dim) == (2, 16)


def test_learner_step_with_audio_views() -> None:
    torch.manual_seed(0)
    backbone = AudioCNN(width=4)
    model = ContrastiveModel(backbone, ProjectionHead(backbone.feature_dim, 32, 8))
    learner = ContrastiveLearner(model, InBatchNegatives(), CosineSimilarity(), InfoNCE(temperature=0.2))
    waves = torch.randn(6, 1, 2000)
    views, g = AudioViews(), torch.Generator().manual_seed(0)
    out = learner(views(waves, g), views(waves, g))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="log-mel"):
        AudioCNN()(torch.randn(2, 1, 8000))
    with pytest.raises(ConfigError, match="width"):
        AudioCNN(width=0)
