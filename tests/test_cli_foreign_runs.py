"""`eval`, `export`, `embed` and `train --resume` given the run of another command (audio-train,
text-train, sela): they recognise it and say what they take instead, rather than calling the checkpoint
foreign or the finished run unfinished."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from contrastkit.cli import main
from contrastkit.errors import ContrastkitError
from contrastkit.training.checkpoint import find_checkpoint, load_checkpoint
from contrastkit.training.text import TextTrainConfig, train_text

from .conftest import AUDIO_TINY

WORDS = "the a cat dog man woman plays runs eats sees big small red green ball park guitar flute".split()
WRITERS = {"audio": "audio-train", "text": "text-train", "text-saved": "text-train", "sela": "sela"}


def _sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(k),), generator=g).tolist())
        for k in torch.randint(3, 9, (n,), generator=g)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, fsdd: Path) -> dict[str, Path]:
    """Real (tiny) runs of audio-train (on the session's fsdd, tests/conftest.py), text-train (with and
    without --save-model) and sela."""
    root = tmp_path_factory.mktemp("foreign")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["audio-train", "--data", str(fsdd), *AUDIO_TINY, "--out", str(root / "audio")]) == 0
        (root / "sentences.txt").write_text("\n".join(_sentences(48, 0)) + "\n", encoding="utf-8")
        (root / "sts").mkdir()
        rows = [
            f"g\tf\t2012\t{i:04d}\t{(i * 7) % 11 / 2:.3f}\t{x}\t{y}"
            for i, (x, y) in enumerate(zip(_sentences(12, 1), _sentences(12, 2)))
        ]
        (root / "sts" / "sts-test.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        tiny = dict(
            sentences=str(root / "sentences.txt"), sts=str(root / "sts"), encoder="scratch", dim=16, depth=1,
            heads=2, min_freq=1, batch_size=8, steps=2, max_length=12, eval_max_length=12, progress=False,
            device="cpu",
        )  # fmt: skip
        train_text(TextTrainConfig(**tiny, out=str(root / "text")))
        train_text(TextTrainConfig(**tiny, save_model=True, out=str(root / "text-saved")))
        sela = [
            "--limit",
            "60",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--no-linear-probe",
            "--device",
            "cpu",
        ]
        assert main(["sela", *sela, "--out", str(root / "sela")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {name: root / name for name in ("audio", "text", "text-saved", "sela")}


def _interrupted_copy(run: Path, to: Path) -> Path:
    """A copy of finished run ``run`` as if interrupted: no metrics.json, an unfinished checkpoint."""
    to.mkdir()
    for f in run.iterdir():
        if f.is_file() and f.name != "metrics.json":
            shutil.copy2(f, to / f.name)
    state = torch.load(to / "checkpoint.pt", map_location="cpu", weights_only=False)
    torch.save({**state, "finished": False}, to / "checkpoint.pt")
    return to


@pytest.mark.parametrize("name", ["audio", "text", "text-saved", "sela"])
@pytest.mark.parametrize("command", ["eval", "export", "embed"])
def test_commands_name_the_run_kind(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, command: str
) -> None:
    run = runs[name]
    kind = name.split("-")[0]
    for target in (run, run / "checkpoint.pt") if (run / "checkpoint.pt").is_file() else (run,):
        argv = [command, str(target)]
        if command == "embed":
            argv += ["--out", str(tmp_path / "e.npz")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            f"a{'n' if kind == 'audio' else ''} {kind} run (written by contrastkit {WRITERS[name]})" in err
        ), err
        assert f"`contrastkit {command}` supports image runs (train's runs)" in err, err
        assert "metrics.json" in err and "Traceback" not in err, err
        assert "is not a contrastkit checkpoint" not in err and "did the run finish" not in err, err
    assert not (tmp_path / "e.npz").exists() and not (run / "backbone.safetensors").exists()


@pytest.mark.parametrize("name", ["audio", "text", "text-saved", "sela"])
def test_resume_names_the_run_kind(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["train", "--resume", str(runs[name])]) == 2
    err = capsys.readouterr().err
    assert f"{str(runs[name])!r} is a finished {WRITERS[name]} run: nothing to resume" in err, err
    assert f"its results are in {runs[name] / 'metrics.json'}" in err, err
    assert "continue it with" not in err and "Traceback" not in err, err


def test_resume_of_an_unfinished_foreign_run_names_its_command(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _interrupted_copy(runs["audio"], tmp_path / "audio")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "`contrastkit train --resume` continues image runs (train's runs) only" in err, err
    assert "continue it with contrastkit audio-train --resume " in err, err


def test_the_loader_recognises_the_kinds(runs: dict[str, Path]) -> None:
    from contrastkit.training.checkpoint import ForeignRunError, detect_run_kind

    assert detect_run_kind(runs["audio"]) == "audio" and detect_run_kind(runs["sela"]) == "sela"
    assert detect_run_kind(runs["text"]) == detect_run_kind(runs["text-saved"] / "config.yaml") == "text"
    with pytest.raises(ForeignRunError) as info:
        find_checkpoint(runs["text"])  # no checkpoint.pt: text-train writes one only with --save-model
    assert info.value.kind == "text"
    for name in ("audio", "text-saved", "sela"):
        with pytest.raises(ForeignRunError) as info:
            load_checkpoint(runs[name])
        assert info.value.kind == name.split("-")[0]
        assert "contrastkit eval, export, embed and train --resume support image runs" in str(info.value)
    with pytest.raises(ForeignRunError, match="is a text run"):
        load_checkpoint(runs["text"] / "config.yaml")  # not a torch file, but the folder says what it is
    state = load_checkpoint(runs["text-saved"], image_run=False)  # still readable as a checkpoint
    assert state["tokenizer"]["kind"] == "words"


def test_an_image_run_is_an_image_run(tmp_path: Path) -> None:
    from contrastkit.training import TrainConfig
    from contrastkit.training.checkpoint import detect_run_kind

    cfg = TrainConfig(limit=200, epochs=1, batch_size=32)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert detect_run_kind(tmp_path) == "image"
    (tmp_path / "metrics.json").write_text('{"knn_top1": 0.9}')
    assert detect_run_kind(tmp_path) == "image"
    with pytest.raises(ContrastkitError, match=r"has no checkpoint\.pt; did the run finish"):
        find_checkpoint(tmp_path)


@pytest.mark.parametrize("command", ["eval", "export", "embed"])
def test_eval_of_an_unfinished_foreign_run_gives_its_resume(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """An interrupted audio run has no metrics.json: the message pointed to it anyway and said nothing of
    --resume."""
    run = _interrupted_copy(runs["audio"], tmp_path / "audio")
    argv = [command, str(run)] + (["--out", str(tmp_path / "e.npz")] if command == "embed" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "this run is unfinished: continue it with contrastkit audio-train --resume " in err, err
    assert "Traceback" not in err
