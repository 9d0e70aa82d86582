"""Fixtures and helpers shared across test folders (opt-in: nothing here is autouse)."""

import functools
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

# cuBLAS reads its workspace setting when it starts, the first CUDA matmul of the process: --deterministic's
# setdefault inside a later test would come too late (the device machine's CUDA tests run in one process)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# audio-train's smallest run on tiny_fsdd: 24 training clips of 0.1 s, batch 8, one epoch, a 4-wide AudioCNN
AUDIO_TINY = [
    "--clip-seconds", "0.1", "--epochs", "1", "--batch-size", "8", "--width", "4", "--proj-hidden-dim", "16",
    "--proj-dim", "8", "--knn-k", "5", "--no-linear-probe", "--device", "cpu",
]  # fmt: skip


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a busy 2-core machine two OpenMP threads spin-wait on each other and
    small-tensor work runs up to 10x slower. Results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def audio_helpers() -> ModuleType:
    """tests/data/test_audio.py as a module, for its synthetic WAVs and FSDD zips (``tone``, ``wav_bytes``,
    ``small_fsdd``)."""
    spec = importlib.util.spec_from_file_location(
        "audio_data_helpers", Path(__file__).parent / "data" / "test_audio.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_fsdd(path: Path, digits: int = 3) -> Path:
    """A synthetic FSDD zip at ``path``: ``digits`` digits x 2 speakers x 9 takes of 300 or 700 samples (with
    3 digits: 24 training clips, takes 5-8, and 30 test clips)."""
    return audio_helpers().small_fsdd(path, digits=digits, takes=9, lengths=(300, 700))


@pytest.fixture(scope="session")
def fsdd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One :func:`tiny_fsdd` of 3 digits for the session (read only: copy it to change it)."""
    return tiny_fsdd(tmp_path_factory.mktemp("fsdd") / "fsdd.zip")


def at_step(
    monkeypatch: pytest.MonkeyPatch,
    step: int,
    action: Any,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
) -> None:
    """Run ``action(optimizer)`` right after the ``step``-th step (1-based) of an ``optimizer`` (the class:
    audio-train's AdamW, sela's SGD), as a stop signal, a crash or a divergence would come."""
    original = optimizer.step
    calls = [0]

    def patched(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == step:
            action(self)
        return result

    monkeypatch.setattr(optimizer, "step", patched)


def blow_up_weights(optimizer: torch.optim.Optimizer) -> None:
    """An :func:`at_step` action: weights huge but finite, so the encoder's outputs overflow to inf while its
    state and the losses read stay finite (a diverging run whose loss had not reached inf yet)."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.mul_(1e15)


def send(signum: int) -> Any:
    """An :func:`at_step` action: send ``signum`` to this process."""
    return lambda _optimizer: os.kill(os.getpid(), signum)


def edit_checkpoint(run: Path, *, progress: dict[str, Any] | None = None, **entries: Any) -> None:
    """Rewrite ``run``'s checkpoint with ``entries`` replaced and ``progress`` merged into its progress, as
    another launch or an interruption would have left it (the loader adds format and version again)."""
    from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run / "checkpoint.pt")
    state = {k: v for k, v in state.items() if k not in ("format", "version", "metrics")}
    state.update(entries)
    if progress:
        state["progress"] = {**state["progress"], **progress}
    save_checkpoint(state, run / "checkpoint.pt")


def interrupt(run: Path, step: int, total: int) -> None:
    """Make the run's checkpoint look like one a Ctrl-C left at ``step`` of ``total``."""
    edit_checkpoint(run, finished=False, step=step, progress={"total_steps": total})
