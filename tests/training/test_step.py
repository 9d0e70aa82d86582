"""What ``--compile`` wraps for each negative source (contrastkit.training.step)."""

import pytest
import torch

from contrastkit.negatives import NEGATIVES, InBatchNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import build_score
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.training.step import compile_learner, compile_model_only
from contrastkit.training.trainer import TrainConfig, build_model


@pytest.mark.parametrize("name", NEGATIVES)
def test_model_only_for_mined_and_mochi(name: str) -> None:
    assert compile_model_only(name) == ("mined" in name or name.endswith("+mochi"))


def test_compile_learner_wraps_the_model_or_the_learner() -> None:
    def learner() -> ContrastiveLearner:
        model = build_model(TrainConfig(), 1, 8)
        return ContrastiveLearner(model, InBatchNegatives(), build_score("cosine"), InfoNCE(0.2))

    eager = learner()
    assert compile_learner(eager, eager.model, compile=False, model_only=True) is eager
    whole = learner()
    compiled = compile_learner(whole, whole.model, compile=True, model_only=False)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is whole
    part = learner()
    net = part.model
    out = compile_learner(part, net, compile=True, model_only=True)
    assert out is part and isinstance(part.model, torch._dynamo.eval_frame.OptimizedModule)
    assert part.model._orig_mod is net


def test_the_first_step_is_timed_apart(tmp_path) -> None:
    from contrastkit.training import train

    m = train(TrainConfig(epochs=1, batch_size=256, progress=False, out=str(tmp_path / "r"))).metrics
    (first,) = m["first_step_seconds"]
    assert 0 < first < m["train_seconds"]
    steady = (m["steps"] - 1) * 256 / (m["train_seconds"] - first)
    assert m["images_per_second_after_first_step"] == pytest.approx(steady)


def test_a_run_of_one_step_has_no_steady_throughput(tmp_path) -> None:
    import math

    from contrastkit.training import train

    m = train(TrainConfig(epochs=1, batch_size=1024, progress=False, out=str(tmp_path / "r"))).metrics
    assert m["steps"] == 1 and math.isnan(m["images_per_second_after_first_step"])
