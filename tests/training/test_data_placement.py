"""--data-placement: streaming a folder image by image trains exactly like decoding it into memory, resumes
exactly, and impossible combinations are refused with the options named."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.errors import ConfigError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes of 16x16 RGB images with class-dependent colour, train (40 each) and test (10 each)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        for k, cls in enumerate(("red", "green", "blue")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 120, (16, 16, 3), dtype=np.uint8)
                px[:, :, k] += 120
                Image.fromarray(px).save(d / f"{i}.png")
    return root


def config(folder, out, **kw):
    base = dict(
        data=str(folder), image_size=16, encoder="small_cnn", epochs=3, batch_size=16, knn_every=1,
        knn_k=20, progress=False, out=str(out), workers=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_streaming_trains_exactly_like_the_in_memory_path(folder, tmp_path, one_thread):
    memory = train(config(folder, tmp_path / "memory"))
    stream = train(config(folder, tmp_path / "stream", data_placement="stream", workers=2))
    assert memory.metrics["knn_protocol"]["data_placement"] == "host memory"
    assert stream.metrics["knn_protocol"]["data_placement"].startswith("streamed from")
    for key in ("knn_top1", "knn_top1_random_init", "knn_top1_raw_pixels", "final_loss", "steps"):
        assert memory.metrics[key] == stream.metrics[key], key
    assert [r["loss"] for r in memory.history] == [r["loss"] for r in stream.history]
    for k, v in memory.model.state_dict().items():
        assert torch.equal(v, stream.model.state_dict()[k]), k


def test_streaming_kill_and_resume_is_exact(folder, tmp_path):
    args = [
        "--data",
        folder,
        "--image-size",
        "16",
        "--encoder",
        "small_cnn",
        "--epochs",
        "4",
        "--batch-size",
        "16",
    ]
    args += [
        "--knn-every",
        "2",
        "--knn-k",
        "20",
        "--no-progress",
        "--data-placement",
        "stream",
        "--workers",
        "1",
    ]
    args += ["--checkpoint-every", "5"]  # 7 steps an epoch: checkpoints mid-epoch
    cmd = [sys.executable, "-m", "contrastkit", "train", *map(str, args)]
    ref = subprocess.Popen([*cmd, "--out", str(tmp_path / "ref")], env=ENV, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "k")], env=ENV, stderr=subprocess.PIPE, text=True
    )
    ckpt = tmp_path / "k" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    state = load_checkpoint(ckpt)
    assert not state["finished"] and state["step"] % 7 != 0
    resumed = subprocess.run(
        [*cmd[:4], "--resume", str(tmp_path / "k"), "--no-progress"], env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=300) == 0
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("ref", "k"))
    assert (a["knn_top1"], a["final_loss"]) == (b["knn_top1"], b["final_loss"])
    assert [c["knn_top1"] for c in a["knn_curve"]] == [c["knn_top1"] for c in b["knn_curve"]]


def test_kNN_monitor_of_a_stream_uses_a_balanced_subset(folder, tmp_path, one_thread):
    result = train(config(folder, tmp_path / "sub", data_placement="stream", knn_images=15, epochs=1))
    protocol = result.metrics["knn_protocol"]
    assert protocol["train_images"] == 15 and protocol["eval_images"] == 15
    assert "kNN on at most 15 decoded images per split" in protocol["eval_split"]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        (dict(data="digits", image_size=None), "the embedded digits are always in memory"),
        (dict(image_size=None), "--data-placement stream needs --image-size N"),
        (dict(negatives="mined"), "--data-placement stream does not hold"),
    ],
)
def test_impossible_stream_combinations_are_refused(folder, tmp_path, changes, needle):
    with pytest.raises(ConfigError, match=needle):
        train(config(folder, tmp_path / "x", data_placement="stream", **changes))


def test_bad_placement_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data_placement .* one of: auto, device, host, stream"):
        TrainConfig(data_placement="gpu")


def test_eval_of_a_streamed_run_streams_every_image_and_matches_the_decoded_eval(
    folder, tmp_path, one_thread
):
    """contrastkit eval of a stream-trained run reads the whole set once (features only, never the images),
    and gives the same kNN, random-init kNN and linear probe as decoding the set into memory."""
    from contrastkit.training.evaluate import evaluate_checkpoint

    run = tmp_path / "s"
    train(config(folder, run, data_placement="stream", knn_images=15, epochs=1))
    streamed = evaluate_checkpoint(run, device="cpu", linear_probe=True, geometry=True, write=False)
    assert streamed["knn_protocol"]["train_images"] == 120 and streamed["knn_protocol"]["eval_images"] == 30
    assert "streamed: kNN and probe on every image" in streamed["knn_protocol"]["eval_split"]
    assert streamed["evaluation"]["geometry"]["eval_images"] == 15  # the decoded subset
    # the same checkpoint, told it was trained in memory: eval decodes the whole set
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"]["data_placement"] = "auto"
    (tmp_path / "m").mkdir()
    torch.save(state, tmp_path / "m" / "checkpoint.pt")
    decoded = evaluate_checkpoint(tmp_path / "m", device="cpu", linear_probe=True, write=False)
    assert decoded["knn_protocol"]["train_images"] == 120
    for key in ("knn_top1", "knn_top1_random_init"):
        assert streamed[key] == decoded[key], key
    a, b = streamed["evaluation"]["linear_probe"], decoded["evaluation"]["linear_probe"]
    assert a["top1"] == pytest.approx(b["top1"], abs=1e-6)
    with pytest.raises(ConfigError, match=r"few-label fine-tuning holds the images in memory.*--limit N"):
        evaluate_checkpoint(run, device="cpu", few_label=(0.5,), write=False)


def test_mined_negatives_index_every_training_image_when_the_monitor_has_a_subset(
    monkeypatch, tmp_path, one_thread
):
    """With the data in pinned host memory (CUDA) the kNN monitor holds a subset; the mined index must still
    cover every training image (row i = dataset index i). Simulated on the CPU by giving the monitor a subset."""
    from dataclasses import replace

    from contrastkit.training import data as data_module
    from contrastkit.training import trainer

    real = data_module.load_training_data

    def with_subset(config, device):
        loaded = real(config, device)
        return replace(
            loaded, knn_splits=data_module._knn_subsets(loaded.knn_splits, config.replace(knn_images=30))
        )

    monkeypatch.setattr(trainer, "load_training_data", with_subset)
    result = train(
        TrainConfig(epochs=1, batch_size=128, negatives="mined", progress=False, out=str(tmp_path / "r"))
    )
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert state["negatives"]["_extra_state"]["embeddings"].shape == (1347, 128)
    assert result.metrics["knn_protocol"]["train_images"] == 30
