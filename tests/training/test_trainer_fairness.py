"""`contrastkit train` compares methods fairly: a run of one seed differs from another method's only in the
piece swapped (`--mined-reencode` keeps the training views and data order), the split does not follow
`--seed` (`--split-seed`), and the run folder records what a comparison needs: the key encoder's momentum,
the kNN monitor's precision and image cap, the environment, the objective's own parameters (banner) and the
negatives (folder name). Runs saved before these were recorded still resume and re-evaluate as they were."""

import dataclasses
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from contrastkit.errors import ConfigError
from contrastkit.training import TrainConfig, train
from contrastkit.training import trainer as trainer_module
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.resume import resume_config

TINY = dict(epochs=1, batch_size=32, limit=160, knn_every=0, knn_k=20, progress=False)


def record_training_draws(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record every training step's batch indices (``idx``) and the views' random parameters drawn for the
    training views (``params``: not those drawn elsewhere, e.g. for re-encoded mined items)."""
    from contrastkit.training import step as step_module
    from contrastkit.views import ImageViews

    seen: dict[str, list] = {"idx": [], "params": []}
    inside = [False]
    real_call, real_sample, real_step = (
        step_module.TwoViews.__call__,
        ImageViews.sample,
        trainer_module._Loop._step,
    )

    def call(self, batch):
        inside[0] = True
        try:
            return real_call(self, batch)
        finally:
            inside[0] = False

    def sample(self, images, generator=None):
        params = real_sample(self, images, generator=generator)
        if inside[0]:
            seen["params"].append(params)
        return params

    def step(self, idx, batch, epoch, stop):
        seen["idx"].append(idx.clone())
        return real_step(self, idx, batch, epoch, stop)

    monkeypatch.setattr(step_module.TwoViews, "__call__", call)
    monkeypatch.setattr(ImageViews, "sample", sample)
    monkeypatch.setattr(trainer_module._Loop, "_step", step)
    return seen


def same_params(a, b) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in ((getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    )


def test_a_reencode_run_trains_on_the_batches_and_views_of_an_in_batch_run(tmp_path, monkeypatch, one_thread):
    """Re-encoding mined items draws their augmentation from its own generator: the training batches (the
    epochs' orders) and the training views' parameters are those of an in-batch run of the same seed."""
    runs = {}
    for name, options in {
        "in-batch": {},
        "reencode": dict(negatives="mined", mined_reencode=True, mined_negatives=4, mined_index="torch"),
    }.items():
        seen = record_training_draws(monkeypatch)
        train(TrainConfig(**{**TINY, "epochs": 2}, **options, seed=5, out=str(tmp_path / name)))
        runs[name] = seen
        monkeypatch.undo()
    a, b = runs["in-batch"], runs["reencode"]
    assert len(a["idx"]) == len(b["idx"]) == 10 and len(a["params"]) == len(b["params"]) == 10
    other_batches = [
        i + 1 for i, (x, y) in enumerate(zip(a["idx"], b["idx"], strict=True)) if not torch.equal(x, y)
    ]
    other_views = [
        i + 1 for i, (x, y) in enumerate(zip(a["params"], b["params"], strict=True)) if not same_params(x, y)
    ]
    assert (other_batches, other_views) == ([], []), "steps whose batch, and whose views, differ"


def test_the_reencode_generator_is_its_own_and_checkpointed(tmp_path, one_thread):
    base = dict(**TINY, negatives="mined", mined_reencode=True, mined_negatives=4, mined_index="torch")
    result = train(TrainConfig(**base, out=str(tmp_path / "run")))
    progress = load_checkpoint(result.run_dir / "checkpoint.pt")["progress"]
    assert not torch.equal(progress["reencode_rng"], progress["view_rng"])
    plain = train(TrainConfig(**TINY, out=str(tmp_path / "plain")))
    assert "reencode_rng" not in load_checkpoint(plain.run_dir / "checkpoint.pt")["progress"]


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next checkpoint written is the last: a KeyboardInterrupt right after it, as if killed."""
    save = trainer_module.save_checkpoint

    def save_then_die(state, path):
        save(state, path)
        monkeypatch.setattr(trainer_module, "save_checkpoint", save)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)


def test_a_reencode_checkpoint_from_before_its_own_generator_resumes_exactly(
    tmp_path, monkeypatch, one_thread
):
    """A checkpoint of a reencode run written while re-encoding shared the views' generator (no
    ``reencode_rng``) resumes sharing it: it ends bitwise like that run's uninterrupted version."""
    real_build = trainer_module._build

    def build_as_before(*args, **kwargs):
        parts = real_build(*args, **kwargs)
        parts.item_views.generator = parts.gen  # the old code: the views' generator
        return parts

    base = dict(
        **{**TINY, "epochs": 2, "limit": 128}, negatives="mined", mined_reencode=True, mined_negatives=4,
        mined_index="torch", deterministic=True,
    )  # fmt: skip
    monkeypatch.setattr(trainer_module, "_build", build_as_before)
    reference = train(TrainConfig(**base, out=str(tmp_path / "ref")))
    run = tmp_path / "stopped"
    stop_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, out=str(run), checkpoint_every=3))
    monkeypatch.undo()
    stopped = load_checkpoint(run / "checkpoint.pt")
    assert stopped["step"] == 3 and "reencode_rng" not in stopped["progress"]
    config, _ = resume_config(run)
    resumed = train(config, resume=run)
    timing = ("seconds", "mined_refresh_seconds")
    rows = [
        [{k: v for k, v in r.items() if k not in timing} for r in x.history] for x in (resumed, reference)
    ]
    assert rows[0] == rows[1] and len(rows[1]) == 8
    final, ref = (load_checkpoint(x.run_dir / "checkpoint.pt") for x in (resumed, reference))
    assert [k for k, v in ref["model"].items() if not torch.equal(final["model"][k], v)] == []
    assert "reencode_rng" not in final["progress"]  # it goes on sharing


@pytest.mark.parametrize(
    ("negatives", "expected"), [("queue", 0.99), ("queue+mochi", 0.99), ("in-batch", 0.0), ("mined", 0.0)]
)
def test_resolution_records_the_key_momentum_used(negatives, expected):
    resolved = trainer_module.resolve_hyperparameters(TrainConfig(negatives=negatives))
    assert resolved.key_momentum == expected == resolved.resolved_key_momentum()
    explicit = trainer_module.resolve_hyperparameters(TrainConfig(negatives="queue", key_momentum=0))
    assert explicit.key_momentum == 0.0


def test_a_queue_run_records_its_key_encoder_and_prints_what_its_objective_takes(tmp_path, one_thread):
    """config.yaml and the checkpoint record key_momentum 0.99; the banner prints triplet's margin and mining
    (not the temperature it does not use); metrics.json's kNN protocol says the features were bf16 (this
    run's precision) of every image, and the environment says how it ran."""
    out = io.StringIO()
    options = dict(
        negatives="queue", queue_size=64, objective="triplet", precision="bf16", deterministic=True
    )
    result = train(TrainConfig(**TINY, **options, out=str(tmp_path / "run")), out=out)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["key_momentum"] == 0.99 and saved["split_seed"] == 0
    assert load_checkpoint(result.run_dir / "checkpoint.pt")["config"]["key_momentum"] == 0.99
    banner = out.getvalue().splitlines()
    assert "objective=triplet(margin=0.5, mining=semi-hard) negatives=queue" in banner[1], banner[1]
    assert "temperature" not in banner[1] and "key_momentum=0.99" in banner[1]
    assert banner[2].endswith("precision=bf16, seed=0 split_seed=0"), banner[2]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["config"] == saved
    protocol = metrics["knn_protocol"]
    assert protocol["precision"] == "bf16" and protocol["knn_images"] is None and protocol["split_seed"] == 0
    assert protocol["images"] == protocol["train_images"] + protocol["eval_images"] == 320
    env = metrics["environment"]
    from contrastkit import __version__

    assert env["contrastkit"] == __version__ and env["torch"] == torch.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3])) and env["threads"] == 1
    assert env["deterministic"] is True and env["device"] == "cpu" and env["device_name"]
    assert "session_environments" not in metrics  # one session


@pytest.mark.parametrize(
    ("objective", "params"),
    [
        ("infonce", "temperature=0.2"),
        ("triplet", "margin=0.5, mining=semi-hard"),
        ("margin", "margin=0.5"),
        ("debiased", "temperature=0.2, tau_plus=0.1"),
        ("hard-negative", "temperature=0.2, tau_plus=0.1, beta=1.0"),
        ("hcl", "temperature=0.2, tau_plus=0.1, beta=1.0"),
        ("decoupled", "temperature=0.2"),
        ("supcon", "temperature=0.2"),
    ],
)
def test_the_banner_names_the_parameters_each_objective_takes(objective, params):
    options = trainer_module.objective_options(TrainConfig(objective=objective))
    assert ", ".join(f"{k}={v}" for k, v in options.items()) == params


def test_the_default_run_folder_names_non_default_negatives():
    stamp = r"-\d{8}-\d{6}"
    assert re.fullmatch(r"runs/digits-infonce" + stamp, str(trainer_module.default_run_dir(TrainConfig())))
    queue = trainer_module.default_run_dir(TrainConfig(negatives="queue+mochi", objective="debiased"))
    assert re.fullmatch(r"runs/digits-debiased-queue\+mochi" + stamp, str(queue)), queue
    mined = trainer_module.default_run_dir(TrainConfig(data="/x/photos.zip", negatives="mined"))
    assert re.fullmatch(r"runs/photos-infonce-mined" + stamp, str(mined)), mined


def split_names(config: TrainConfig) -> tuple[list[str], list[str]]:
    splits, _ = trainer_module.load_splits(config)
    return splits.train.names, splits.test.names


@pytest.mark.parametrize("data", ["digits", "folder"])
@pytest.mark.parametrize("limit", [None, 40])
def test_the_split_follows_split_seed_not_seed(data, limit, folder):
    """The digits' test split, the 20% held out of a folder without test/, and --limit's subsets: the same
    for every --seed, another for another --split-seed."""
    spec = "digits" if data == "digits" else str(folder)
    base = split_names(TrainConfig(data=spec, limit=limit))
    assert split_names(TrainConfig(data=spec, limit=limit, seed=1)) == base
    other = split_names(TrainConfig(data=spec, limit=limit, split_seed=1))
    assert other[1] != base[1]
    if limit is not None:  # other images, not only another split of them
        assert set(other[0]) | set(other[1]) != set(base[0]) | set(base[1])


def test_streamed_splits_and_knn_subsets_follow_split_seed(folder):
    from contrastkit.training.data import _knn_subsets, stream_splits

    def streamed(**kw):
        found = stream_splits(
            TrainConfig(
                data=str(folder), data_placement="stream", image_size=8, knn_images=10, workers=0, **kw
            )
        )
        return found.test.names, found.subsets.train.names, found.subsets.test.names

    assert streamed(seed=1) == streamed() != streamed(split_seed=1)
    splits, _ = trainer_module.load_splits(TrainConfig(data=str(folder)))

    def subsets(**kw):
        knn = _knn_subsets(splits, TrainConfig(knn_images=10, **kw))
        return knn.train.names, knn.test.names

    assert subsets(seed=1) == subsets() != subsets(split_seed=1)


def test_a_streamed_run_records_the_knn_image_cap(folder, tmp_path, one_thread):
    options = dict(data=str(folder), data_placement="stream", image_size=8, knn_images=20, workers=0)
    result = train(
        TrainConfig(**options, epochs=1, batch_size=16, knn_k=5, progress=False, out=str(tmp_path / "run"))
    )
    protocol = result.metrics["knn_protocol"]
    assert protocol["knn_images"] == 20 and protocol["train_images"] == 20 and protocol["eval_images"] == 12
    assert protocol["images"] == 32 and protocol["precision"] == "fp32"


def as_before_split_seed(run: Path) -> dict:
    """Make ``run``'s checkpoint and config.yaml look written before split_seed and the recorded key momentum
    (and the session environments) existed; returns the old configuration."""
    path = run / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["config"]["split_seed"]
    state["config"]["key_momentum"] = None
    state["progress"].pop("session_environments")
    save_checkpoint(state, path)
    (run / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    return state["config"]


def test_a_run_saved_before_split_seed_resumes_and_evaluates_on_its_own_split(
    tmp_path, monkeypatch, one_thread, capsys
):
    """An old run of --seed 3 split its data with 3: `eval` and `train --resume` keep that split (the resume's
    data fingerprint would refuse another) and read its null key_momentum as the 0.99 it used, so giving
    either again is no change; another --split-seed is refused as a change."""
    from contrastkit.cli import main
    from contrastkit.training import evaluate as evaluate_module

    run = tmp_path / "old"
    stop_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # split as the old code split a run of --seed 3
        train(
            TrainConfig(
                **TINY,
                negatives="queue",
                queue_size=64,
                seed=3,
                split_seed=3,
                checkpoint_every=2,
                out=str(run),
            )
        )
    old = as_before_split_seed(run)
    assert "split_seed" not in old and old["key_momentum"] is None

    read = TrainConfig.from_dict(old, source="checkpoint.pt", saved_run=True)
    assert read.split_seed == 3 and read.key_momentum == 0.99
    # options for a new run (even a copy of a whole old config.yaml): its seed leaves the split alone
    assert TrainConfig.from_dict({"seed": 3, "negatives": "queue"}).split_seed == 0
    assert TrainConfig.from_dict({"seed": 3, "negatives": "queue"}).key_momentum is None
    assert TrainConfig.from_dict(old).split_seed == 0

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    used = []
    real = evaluate_module.load_splits

    def load_splits(config):
        used.append(config.split_seed)
        return real(config)

    monkeypatch.setattr(evaluate_module, "load_splits", load_splits)
    assert main(["eval", str(copy), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert used and set(used) == {3}  # the run's split
    assert "knn" in json.loads((copy / "metrics.json").read_text())["evaluation"]

    with pytest.raises(ConfigError, match=r"--split-seed: run has 3, now 0"):
        resume_config(run, {"split_seed": 0})
    with pytest.raises(ConfigError, match=r"--key-momentum: run has 0.99, now 0"):
        resume_config(run, {"key_momentum": 0})
    config, _ = resume_config(run, {"split_seed": 3, "key_momentum": 0.99, "seed": 3})
    assert config.split_seed == 3 and config.key_momentum == 0.99
    resumed = train(config, resume=run)  # the same training images: the fingerprint check passes
    assert resumed.metrics["knn_protocol"]["split_seed"] == 3
    assert [s["from_step"] for s in resumed.metrics["session_environments"]] == [2]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["split_seed"] == 3 and saved["key_momentum"] == 0.99
    assert json.loads((run / "metrics.json").read_text())["config"] == saved
    assert "differs from the checkpoint's configuration" not in capsys.readouterr().out


def test_a_resumed_run_records_every_sessions_environment(tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    stop_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**TINY, checkpoint_every=2, out=str(run)))
    config, _ = resume_config(run)
    resumed = train(config, resume=run)
    sessions = resumed.metrics["session_environments"]
    assert [s["from_step"] for s in sessions] == [0, 2]
    assert all(
        {k: v for k, v in s.items() if k != "from_step"} == resumed.metrics["environment"] for s in sessions
    )


@pytest.mark.parametrize("value", [-1, 2**32, True])
def test_split_seed_is_checked(value):
    with pytest.raises(
        ConfigError, match=r"split_seed \(--split-seed\) must be an integer in \[0, 2\*\*32\)"
    ):
        TrainConfig(split_seed=value)


def test_the_command_line_takes_split_seed(tmp_path, capsys):
    from contrastkit.cli import build_parser, config_from_args, main

    args = build_parser().parse_args(["train", "--seed", "4", "--split-seed", "2"])
    assert (config_from_args(args).seed, config_from_args(args).split_seed) == (4, 2)
    assert main(["train", "--split-seed", "-1", "--out", str(tmp_path / "run")]) == 2
    assert "option split_seed (--split-seed) must be an integer in [0, 2**32)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_mined_run_records_the_index_kind_auto_took(tmp_path, monkeypatch, one_thread):
    """--mined-index auto is resolved when the run starts and recorded (config.yaml, the checkpoint): a
    resume on a machine where faiss came or went searches with the same kind, not another auto choice."""
    monkeypatch.setattr(trainer_module, "resolve_index_kind", lambda kind, device: "torch")
    config = TrainConfig(
        **{**TINY, "epochs": 2}, negatives="mined", mined_negatives=4, out=str(tmp_path / "r")
    )
    stop_after_checkpoint(monkeypatch)  # the first checkpoint (before the first step) is the last
    with pytest.raises(KeyboardInterrupt):
        train(config)
    run = tmp_path / "r"
    assert yaml.safe_load((run / "config.yaml").read_text())["mined_index"] == "torch"
    assert load_checkpoint(run / "checkpoint.pt")["config"]["mined_index"] == "torch"
    # on resume auto would now take faiss flat: the recorded kind is kept
    monkeypatch.setattr(
        trainer_module, "resolve_index_kind", lambda kind, device: "flat" if kind == "auto" else kind
    )
    resumed, _ = resume_config(run)
    assert resumed.mined_index == "torch"
    result = train(resumed, resume=run)
    assert result.metrics["config"]["mined_index"] == "torch"


def test_a_flat_mined_run_resumes_where_faiss_has_gone_only_as_asked(tmp_path, monkeypatch, one_thread):
    """A run recorded as faiss 'flat' on a machine without faiss: the resume says why it cannot search as it
    ran and offers --mined-index torch (exact too), which it then accepts as no change of the run."""
    pytest.importorskip("faiss")
    from contrastkit.errors import ConfigError as Refused
    from contrastkit.negatives import mined as mined_module

    config = TrainConfig(
        **{**TINY, "epochs": 2},
        negatives="mined",
        mined_negatives=4,
        mined_index="flat",
        out=str(tmp_path / "r"),
    )
    stop_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    run = tmp_path / "r"

    def no_faiss():
        raise Refused("mined negatives need the faiss library: pip install faiss-cpu")

    monkeypatch.setattr(mined_module, "import_faiss", no_faiss)
    with pytest.raises(Refused, match=r"searched its mined negatives with the faiss index 'flat'") as caught:
        resume_config(run)
    assert "pip install faiss-cpu to resume it as it ran, or resume it with --mined-index torch" in str(
        caught.value
    )
    resumed, saved = resume_config(run, {"mined_index": "torch"})
    assert resumed.mined_index == "torch"
    result = train(resumed, resume=run)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["finished"] and state["config"]["mined_index"] == "torch"
    assert result.metrics["resumed_at_steps"] == [saved["step"]] and saved["step"] < state["step"]


def test_a_kill_before_the_finished_checkpoint_leaves_metrics_and_a_resumable_run(tmp_path, monkeypatch):
    """metrics.json is written before the finished checkpoint: a kill between the two leaves both the
    metrics and the resumable checkpoint (the other order left a finished checkpoint without metrics.json,
    which a resume refused as finished)."""
    save = trainer_module.save_checkpoint

    def die_at_the_finished_one(state, path):
        if state.get("finished"):
            raise KeyboardInterrupt
        save(state, path)

    run = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "save_checkpoint", die_at_the_finished_one)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**TINY, out=str(run)))
    monkeypatch.undo()
    first = json.loads((run / "metrics.json").read_text())
    assert not load_checkpoint(run / "checkpoint.pt").get("finished")
    config, _ = resume_config(run)
    resumed = train(config, resume=run)
    assert load_checkpoint(run / "checkpoint.pt")["finished"]
    assert resumed.metrics["knn_top1"] == first["knn_top1"]


def test_a_checkpoint_copied_from_another_run_is_refused_not_given_the_folders_history(tmp_path, monkeypatch):
    runs = {}
    for name, seed in (("a", 0), ("b", 1)):
        stop_after_checkpoint(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            train(
                TrainConfig(**{**TINY, "epochs": 2}, seed=seed, checkpoint_every=3, out=str(tmp_path / name))
            )
        monkeypatch.undo()
        runs[name] = tmp_path / name
    assert load_checkpoint(runs["b"] / "checkpoint.pt")["progress"]["history_last_row"]["step"] == 3
    shutil.copy(runs["b"] / "checkpoint.pt", runs["a"] / "checkpoint.pt")
    config, _ = resume_config(runs["a"])
    with pytest.raises(
        ConfigError, match=r"history\.jsonl is not this checkpoint's run \(the loss at step 3"
    ):
        train(config, resume=runs["a"])
    config, _ = resume_config(runs["b"])  # its own checkpoint: resumes
    assert train(config, resume=runs["b"]).metrics["resumed_at_steps"] == [3]


def test_deterministic_settings_are_put_back_after_train(tmp_path: Path) -> None:
    """--deterministic switches process-wide torch settings for the run only: a later caller's work (or the
    next test in the process) keeps its own."""
    assert not torch.are_deterministic_algorithms_enabled()
    train(TrainConfig(**{**TINY, "epochs": 1, "limit": 128}, deterministic=True, out=str(tmp_path / "r")))
    assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        train(TrainConfig(**{**TINY, "epochs": 1, "limit": 128}, out=str(tmp_path / "r2")))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
