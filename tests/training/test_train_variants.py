"""`contrastkit train` end to end (subprocesses, run side by side) for the negative sources and objectives
beyond the default, and clean refusals of option combinations that cannot work."""

import json
import os
import subprocess
import sys

import pytest
import torch

from contrastkit.training.checkpoint import load_checkpoint

COMMON = ("--epochs", "1", "--batch-size", "128", "--no-progress")
RUNS = {
    "queue": ("--negatives", "queue", "--queue-size", "512"),
    "mochi": (
        "--negatives",
        "queue+mochi",
        "--queue-size",
        "512",
        "--mix-hardest",
        "64",
        "--mix-synthetic",
        "32",
        "--mix-query",
        "8",
    ),
    "in-batch-mined": (
        "--negatives",
        "in-batch+mined",
        "--oracle",
        "--mined-negatives",
        "4",
        "--mined-index",
        "torch",  # the torch kind end to end (auto takes faiss flat on the CPU)
    ),
    "debiased": ("--objective", "debiased"),
    "supcon": ("--objective", "supcon"),
    "oracle": ("--oracle",),
    "byol-views": ("--views", "byol", "--jitter", "0.5"),
    "mined-debiased": (
        "--negatives",
        "mined",
        "--objective",
        "debiased",
        "--oracle",
        "--mined-refresh-every",
        "4",
    ),
    "mined-mochi": (  # the faiss flat index end to end (the default index kind is torch)
        "--negatives",
        "mined+mochi",
        "--mined-reencode",
        "--mined-negatives",
        "8",
        "--mined-index",
        "flat",
    ),
}
REFUSED = {
    "oracle-supcon": (("--oracle", "--objective", "supcon"), ("--oracle", "--objective supcon")),
    "gather": (("--negatives", "gather"), ("--negatives gather", "torchrun")),
    "queue-size": (("--negatives", "queue", "--queue-size", "0"), ("--queue-size",)),
    "mined-index": (
        ("--negatives", "mined", "--mined-index", "lsh"),
        ("--mined-index", "auto, torch, flat, hnsw, ivf"),
    ),
    "no-batchnorm": (("--no-batchnorm",), ("--no-batchnorm", "small_cnn", "--encoder mlp")),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every run at once (one thread each: the machine may have 2 CPUs) and wait for all."""
    root = tmp_path_factory.mktemp("variants")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, args in RUNS.items():
        cmd = [sys.executable, "-m", "contrastkit", "train", *COMMON, *args, "--out", str(root / name)]
        procs[name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    for name, (args, _) in REFUSED.items():
        cmd = [sys.executable, "-m", "contrastkit", "train", *COMMON, *args, "--out", str(root / name)]
        procs[name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[name] = (p.returncode, out, err, root / name)
    return results


@pytest.mark.parametrize("name", list(RUNS))
def test_variant_trains_and_writes_metrics(runs, name):
    rc, _, err, run_dir = runs[name]
    assert rc == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["knn_top1"] <= 1 and metrics["steps"] > 0
    assert metrics["final_loss"] == metrics["final_loss"]  # not NaN


@pytest.mark.parametrize("name", ["queue", "mochi"])
def test_queue_checkpoint_holds_queue_and_key_encoder(runs, name):
    _, out, _, run_dir = runs[name]
    assert "queue_size=512" in out and "key_momentum=0.99" in out
    state = load_checkpoint(run_dir / "checkpoint.pt")
    prefix = "source." if name == "mochi" else ""
    assert int(state["negatives"][prefix + "queue.filled"]) == 512
    assert state["negatives"][prefix + "queue.keys"].shape == (512, 128)
    assert state["key_encoder"] is not None
    key = {k.removeprefix("model."): v for k, v in state["key_encoder"].items()}
    moved = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.equal(v, key[k])]
    assert moved  # the key encoder is an EMA of the model, not a copy
    if name == "mochi":
        assert state["negatives"]["_extra_state"]["step"] == state["step"]


@pytest.mark.parametrize("name", ["mined-debiased", "mined-mochi"])
def test_mined_runs_log_staleness_and_keep_the_index_in_the_checkpoint(runs, name):
    _, out, _, run_dir = runs[name]
    refresh = 4 if name == "mined-debiased" else 10  # 10 steps an epoch (1,347 digits, batch 128)
    index = "flat"  # mined-debiased: auto, faiss flat on the CPU; mined-mochi: flat by name
    assert f"refresh_every={refresh} index={index}" in out
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["mined_staleness"] for r in rows] == [i % refresh for i in range(10)]
    refreshed = [r["mined_refresh_seconds"] > 0 for r in rows]
    assert refreshed == [i % refresh == 0 for i in range(10)]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    extra = state["negatives"]["_extra_state" if name == "mined-debiased" else "source._extra_state"]
    assert extra["embeddings"].shape == (1347, 128) and extra["step"] == 10
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mined_index_refresh_seconds"] == pytest.approx(
        sum(r["mined_refresh_seconds"] for r in rows)
    )
    if name == "mined-mochi":
        assert all(0 < r["mined_reencoded"] <= 2 * 128 * 8 for r in rows) and "reencode=on" in out
        assert all("proxy_accuracy" in r for r in rows)


def test_mochi_sizes_reach_the_mixing(runs):
    _, out, _, run_dir = runs["mochi"]
    assert "mix (N, s, s')=(64, 32, 8)" in out
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert all("proxy_accuracy" in r for r in rows)


def test_in_batch_plus_mined_contrasts_with_both_sets(runs):
    _, out, _, run_dir = runs["in-batch-mined"]
    assert "negatives=in-batch+mined+oracle" in out and "mined_negatives=4" in out and "index=torch" in out
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["mined_staleness"] for r in rows] == list(range(10))  # refreshed once per epoch (10 steps)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["negatives"]["second._extra_state"]["embeddings"].shape == (1347, 128)


def test_in_batch_checkpoint_has_no_key_encoder(runs):
    state = load_checkpoint(runs["oracle"][3] / "checkpoint.pt")
    assert state["key_encoder"] is None and state["negatives"] == {}


@pytest.mark.parametrize("name", list(REFUSED))
def test_impossible_combinations_exit_2_naming_the_options(runs, name):
    rc, _, err, run_dir = runs[name]
    assert rc == 2, err
    assert "Traceback" not in err
    for needle in REFUSED[name][1]:
        assert needle in err, err
    assert not (run_dir / "checkpoint.pt").exists()


def test_view_recipe_options_and_small_image_adaptations():
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.trainer import DataInfo, build_view_pair

    digits = DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.2,), classes=list("0123456789"))
    v1, v2 = build_view_pair(TrainConfig(), digits)
    assert v1 is v2 and v1.scale == (0.5, 1.0) and v1.flip_p == 0.0
    assert (v1.brightness, v1.hue, v1.jitter_p, v1.grayscale_p) == ((0.6, 1.4), (-0.1, 0.1), 0.8, 0.2)
    cifar = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.2,) * 3, classes=["a", "b"])
    b1, b2 = build_view_pair(TrainConfig(data="x.zip", views="byol", jitter=0.8, grayscale_p=0.0), cifar)
    assert b1 is not b2 and (b1.blur_p, b2.blur_p, b1.solarize_p, b2.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert (
        b1.scale == (0.08, 1.0)
        and b1.flip_p == 0.5
        and b2.saturation == pytest.approx((0.2, 1.8))
        and b2.grayscale_p == 0
    )
    m1, _ = build_view_pair(TrainConfig(data="x.zip", views="mocov2", crop_min_scale=0.3), cifar)
    assert m1.scale == (0.3, 1.0) and m1.blur_p == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"negatives": "bank"}, "--negatives.*mined"),
        ({"mined_negatives": 0}, "--mined-negatives"),
        ({"mined_refresh_every": -1}, "--mined-refresh-every"),
        ({"mined_index": "lsh"}, "--mined-index"),
    ],
)
def test_mined_options_are_checked(changes, message):
    from contrastkit.errors import ConfigError
    from contrastkit.training.config import TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_mined_index_defaults_to_auto(monkeypatch):
    from contrastkit.errors import ConfigError
    from contrastkit.negatives import mined
    from contrastkit.training.config import TrainConfig

    assert TrainConfig().mined_index == "auto" and TrainConfig(mined_index="hnsw").mined_index == "hnsw"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (
        mined.resolve_index_kind("auto", cpu) == "flat" and mined.resolve_index_kind("auto", cuda) == "torch"
    )
    assert mined.resolve_index_kind("hnsw", cuda) == "hnsw"

    def no_faiss():
        raise ConfigError("no faiss")

    monkeypatch.setattr(mined, "import_faiss", no_faiss)
    assert mined.resolve_index_kind("auto", cpu) == "torch"


@pytest.mark.parametrize(
    "options",
    [
        {"negatives": "mined", "mined_reencode": True},
        {"negatives": "mined+mochi", "mined_index": "hnsw", "oracle": True, "key_momentum": 0.99},
    ],
    ids=["reencode", "mochi-hnsw-momentum"],
)
def test_mined_run_resumes_exactly(tmp_path, monkeypatch, one_thread, options):
    """Stopped right after a mid-epoch checkpoint (the index then 1 step old) and resumed, a mined run ends
    exactly like the uninterrupted one: the index comes back from the checkpoint, not from a re-embedding."""
    from contrastkit.training import TrainConfig, train
    from contrastkit.training import trainer as trainer_module
    from contrastkit.training.resume import resume_config

    base = dict(
        epochs=2, batch_size=64, limit=320, knn_every=0, progress=False, mined_refresh_every=3,
        mined_negatives=6, deterministic=True, **options,
    )  # fmt: skip
    reference = train(TrainConfig(**base, out=str(tmp_path / "ref")))
    save = trainer_module.save_checkpoint

    def save_then_die(state, path):
        save(state, path)
        raise KeyboardInterrupt  # as if killed right after the checkpoint at step 4

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    run = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, out=str(run), checkpoint_every=4))
    monkeypatch.setattr(trainer_module, "save_checkpoint", save)
    stopped = load_checkpoint(run / "checkpoint.pt")
    extra = stopped["negatives"]["_extra_state" if options["negatives"] == "mined" else "source._extra_state"]
    assert stopped["step"] == 4 and extra["steps_since_refresh"] == 1 and extra["embeddings"] is not None
    config, _ = resume_config(run)
    resumed = train(config, resume=run)

    def rows(result):
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "mined_refresh_seconds")}
            for r in result.history
        ]

    assert rows(resumed) == rows(reference) and len(rows(reference)) == 10
    assert [r["mined_refresh_seconds"] > 0 for r in resumed.history] == [i % 3 == 0 for i in range(10)]
    final, ref = (load_checkpoint(r.run_dir / "checkpoint.pt") for r in (resumed, reference))
    for key, value in ref["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert resumed.metrics["knn_top1"] == reference.metrics["knn_top1"]
