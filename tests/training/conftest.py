"""Fixtures of the training tests: small image folders on disk, from the embedded digits; a small text data
set (training sentences and STS pairs); stop signals and crashes at a given text-train step."""

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

WORDS = "the a cat dog man woman plays runs eats sees big small red green ball park guitar flute".split()


def digit_folder(root: Path, limit: int = 60, class_name: str | None = None) -> Path:
    """``limit`` digit images as PNG files under ``root/train/<class>/`` (no test/: 20% held out); all in
    one class folder ``class_name`` when given."""
    from PIL import Image

    from contrastkit.data import load_dataset

    digits = load_dataset("digits", limit=limit).train
    for i, (img, label) in enumerate(zip(digits.images, digits.labels.tolist(), strict=True)):
        (root / "train" / (class_name or str(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(root / "train" / (class_name or str(label)) / f"{i:03d}.png")
    return root


@pytest.fixture
def learner_indices(monkeypatch: pytest.MonkeyPatch) -> list:
    """The ``indices`` each ``ContrastiveLearner.forward`` call of the test gets (None: not passed)."""
    from contrastkit.training.learner import ContrastiveLearner

    seen: list = []
    forward = ContrastiveLearner.forward

    def spy(self, view1, view2, labels=None, indices=None):  # type: ignore[no-untyped-def]
        seen.append(indices)
        return forward(self, view1, view2, labels, indices)

    monkeypatch.setattr(ContrastiveLearner, "forward", spy)
    return seen


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """60 digit images as PNG files under imgs/train/<class>/."""
    return digit_folder(tmp_path / "imgs")


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` random sentences of 3 to 8 of :data:`WORDS` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g).tolist()
    return [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist()) for k in lengths
    ]


@pytest.fixture
def text_data(tmp_path: Path) -> dict[str, str]:
    """text-train's data in ``tmp_path``: 48 training sentences and 12 STS-B test pairs (``sentences`` and
    ``sts`` options)."""
    (tmp_path / "sentences.txt").write_text("\n".join(sentences(48)) + "\n", encoding="utf-8")
    sts = tmp_path / "sts"
    sts.mkdir()
    a, b = sentences(12, seed=1), sentences(12, seed=2)
    rows = [f"g\tf\t2012\t{i:04d}\t{(i * 7) % 11 / 2:.3f}\t{x}\t{y}" for i, (x, y) in enumerate(zip(a, b))]
    (sts / "sts-test.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"sentences": str(tmp_path / "sentences.txt"), "sts": str(sts)}


class Unhandled(Exception):
    """A stop signal reached the test's fallback handler: the code under test did not catch it."""


@pytest.fixture
def restore_signal_handlers():
    """The test leaves SIGINT and SIGTERM as it found them (:func:`at_steps` replaces them)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def at_steps(monkeypatch: pytest.MonkeyPatch, actions: dict[int, Callable[[], object]]) -> None:
    """Run ``actions[n]()`` at the start of the n-th text-train step of this test (counted across runs), as a
    Ctrl-C, a kill or a crash would come. Until text-train installs its handlers, a SIGINT or SIGTERM raises
    :class:`Unhandled` instead of ending the test session or the process (use ``restore_signal_handlers``)."""
    import contrastkit.training.text as text_module

    calls = {"n": 0}
    real = text_module.trim_padding

    def trim(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        action = actions.get(calls["n"])
        if action is not None:
            action()
        return real(*args, **kwargs)

    def unhandled(signum: int, frame: object) -> None:
        raise Unhandled(f"{signal.Signals(signum).name} was not handled by text-train")

    monkeypatch.setattr(text_module, "trim_padding", trim)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, unhandled)
