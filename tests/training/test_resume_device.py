"""A run resumes only on the kind of device it ran on (the generators' states differ between kinds)."""

import pytest

from contrastkit.errors import ConfigError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.resume import resume_config


def test_resume_on_another_kind_of_device_is_refused(tmp_path, one_thread):
    run = tmp_path / "r"
    cfg = TrainConfig(epochs=2, batch_size=64, limit=128, knn_every=0, progress=False, out=str(run))
    train(cfg)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["progress"]["device_type"] == "cpu"
    # the same run as if it had stopped on a GPU after its first epoch
    state.update(finished=False, step=2)
    state["progress"].update(device_type="cuda", epoch=1, next_batch=0, order=None)
    state = {k: v for k, v in state.items() if k not in ("format", "version", "metrics")}
    save_checkpoint(state, run / "checkpoint.pt")
    config, _ = resume_config(run, {"device": "cpu"})
    with pytest.raises(ConfigError, match="it ran on cuda, whose random generators' states do not transfer"):
        train(config, resume=run)
    kept = load_checkpoint(run / "checkpoint.pt")  # the refused resume wrote nothing
    assert kept["step"] == 2 and not kept["finished"] and kept["progress"]["device_type"] == "cuda"
