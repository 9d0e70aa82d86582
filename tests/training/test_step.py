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


@pytest.mark.parametrize("negatives", ["in-batch", "queue", "queue+mochi", "in-batch+mined"])
def test_compiled_training_traces_every_source(negatives, tmp_path, monkeypatch) -> None:
    """--compile end to end for each kind of source (dynamo with the aot_eager backend: the tracing of the
    GPU runs without the kernel generation), with no graph break and no recompilation after the first steps
    (MoCHi's counter and a lazily allocated queue each made the learner recompile)."""
    from torch._dynamo.utils import counters

    from contrastkit.training import train

    monkeypatch.setenv("CONTRASTKIT_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    config = TrainConfig(
        epochs=2, batch_size=256, compile=True, negatives=negatives, queue_size=512, mined_negatives=4,
        mix_start_epoch=0, progress=False, out=str(tmp_path / "r"),
    )  # fmt: skip
    m = train(config).metrics
    assert m["steps"] == 10 and m["final_loss"] == m["final_loss"]
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]  # the views' render and the learner (or its model)
    assert graphs == 2, f"{graphs} graphs compiled: something recompiles (the whole MoCHi learner gave 9)"
