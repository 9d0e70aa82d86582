"""A run resumes only on the kind of device it ran on (the generators' states differ between kinds); a
CUDA run on a machine without CUDA is told it needs a GPU. A checkpoint that does not fit the model is
refused naming its first mismatch."""

from pathlib import Path

import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.resume import check_resume_device, resume_config

NEEDS_GPU = "its random generators' states do not transfer to the CPU: resume it on a machine with a GPU"


def _stopped_run(run: Path, device_type: str = "cpu", **changes: object) -> None:
    """A finished tiny image run, rewritten as if it had stopped after its first epoch on ``device_type``."""
    cfg = TrainConfig(epochs=2, batch_size=64, limit=128, knn_every=0, progress=False, out=str(run))
    train(cfg)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["progress"]["device_type"] == "cpu"
    state.update(finished=False, step=2, **changes)
    state["progress"].update(device_type=device_type, epoch=1, next_batch=0, order=None)
    state = {k: v for k, v in state.items() if k not in ("format", "version", "metrics")}
    save_checkpoint(state, run / "checkpoint.pt")


def test_a_cuda_run_where_cuda_is_available_is_told_to_use_it(
    tmp_path, one_thread, monkeypatch: pytest.MonkeyPatch
):
    run = tmp_path / "r"
    _stopped_run(run, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config, _ = resume_config(run, {"device": "cpu"})
    with pytest.raises(ConfigError, match="it ran on cuda, whose random generators' states do not transfer"):
        train(config, resume=run)
    kept = load_checkpoint(run / "checkpoint.pt")  # the refused resume wrote nothing
    assert kept["step"] == 2 and not kept["finished"] and kept["progress"]["device_type"] == "cuda"


def test_a_cuda_run_on_a_machine_without_cuda_needs_a_gpu(tmp_path, one_thread, monkeypatch):
    """Not `--device cuda` (refused here: no CUDA), nor `--device cpu` (refused: it ran on cuda)."""
    run = tmp_path / "r"
    _stopped_run(run, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for given in ({}, {"device": "cpu"}, {"device": "cuda"}):
        with pytest.raises(ConfigError, match=NEEDS_GPU) as info:
            resume_config(run, given)
        assert "use --device cpu" not in str(info.value)
    kept = load_checkpoint(run / "checkpoint.pt")
    assert kept["step"] == 2 and not kept["finished"]


def test_check_resume_device_says_what_leads_somewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"device": "cuda:0"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"on cpu: it ran on cuda; {NEEDS_GPU}"):
        check_resume_device(state, torch.device("cpu"), "run")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"resume it with --device cuda$"):
        check_resume_device(state, torch.device("cpu"), "run")
    with pytest.raises(ConfigError, match=r"it ran on cpu.*resume it with --device cpu$"):
        check_resume_device({"device": "cpu"}, torch.device("cuda"), "run")
    check_resume_device(state, torch.device("cuda:1"), "run")  # another CUDA index is fine


def test_a_misfit_checkpoint_names_its_first_mismatch(tmp_path, one_thread):
    run = tmp_path / "r"
    _stopped_run(run)
    state = load_checkpoint(run / "checkpoint.pt")
    first = next(iter(state["model"]))
    model = {k: v for k, v in state["model"].items() if k != first}
    save_checkpoint(
        {**{k: v for k, v in state.items() if k not in ("format", "version")}, "model": model},
        run / "checkpoint.pt",
    )
    config, _ = resume_config(run)
    with pytest.raises(ConfigError, match="does not fit the model") as info:
        train(config, resume=run)
    assert f"Missing key(s) in state_dict: {first}" in str(info.value), info.value


def test_resolve_device_refuses_malformed_names_and_missing_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from contrastkit.training.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("gpu", "CPU", "cuda:x"):
        with pytest.raises(ConfigError, match=r"is not a device; use auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    with pytest.raises(ConfigError, match=r"names GPU 1, but this machine has 1 \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cpu").type == "cpu"
