"""Config files that cannot be read, non-finite numbers and static option combinations that cannot work:
each is a :class:`ConfigError` that names the problem and what to do."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.errors import ConfigError
from contrastkit.training.config import TrainConfig, check_option_combinations, load_config_file
from contrastkit.training.trainer import check_combinations


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bin{suffix}"
    path.write_bytes(b"\xff\xfe\x00\x01 binary \x89PNG")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xff at offset 0\).*UTF-8"):
        load_config_file(path)


def test_a_folder_given_as_config_file_is_named_a_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    with pytest.raises(ConfigError, match=r"'.*cfg' is a folder; give the path of a \.toml"):
        load_config_file(tmp_path / "cfg")


@pytest.mark.parametrize("command", ["train", "text-train"])
def test_cli_config_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(128, 256)))
    (tmp_path / "cfg").mkdir()
    nan = tmp_path / "nan.toml"
    nan.write_text("temperature = nan\n")
    for path, needle in (
        (binary, "is not UTF-8 text"),
        (tmp_path / "cfg", "is a folder"),
        (nan, "option temperature must be a finite number, got nan"),
    ):
        assert main([command, "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_not_called_a_wrong_type(value: float) -> None:
    with pytest.raises(
        ConfigError, match=rf"temperature \(--temperature\) must be a finite number, got {value}"
    ):
        TrainConfig.from_dict({"temperature": value})
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        TrainConfig.from_dict({"lr": value})
    assert "wrong type" not in str(info.value)


def test_yaml_and_json_nan_in_a_config_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("temperature: .nan\n")
    (tmp_path / "a.json").write_text('{"temperature": NaN}\n')
    for name in ("a.yaml", "a.json"):
        with pytest.raises(ConfigError, match="option temperature must be a finite number, got nan"):
            load_config_file(tmp_path / name)


@pytest.mark.parametrize("command", ["train", "text-train"])
def test_an_empty_yaml_value_is_refused_unless_the_option_takes_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """``batchnorm:`` (null) trained without BatchNorm and recorded null; ``data:`` and ``device:`` crashed
    with tracebacks. Options that take None (``out``, ``key_momentum``) still do."""
    from contrastkit.training.text import TextTrainConfig

    cls = TrainConfig if command == "train" else TextTrainConfig
    assert cls.from_dict({"out": None, "key_momentum": None}).out is None
    with pytest.raises(
        ConfigError, match=r"option device \(--device\) is empty \(null\).*default \('auto'\)"
    ):
        cls.from_dict({"device": None})
    name = "batchnorm" if command == "train" else "save_model"
    (tmp_path / "c.yaml").write_text(f"{name}:\n", encoding="utf-8")
    assert main([command, "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"option {name} (--{name.replace('_', '-')}) is empty (null); give it a value (bool)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "text-train"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_non_finite_flags(capsys: pytest.CaptureFixture[str], command: str, value: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, f"--temperature={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--temperature: must be a finite number, got {value}" in err and "wrong type" not in err, err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"negatives": "queue", "batch_size": 32, "shuffle_bn_groups": 64},
            r"--shuffle-bn-groups 64 .*--batch-size 32.*use --shuffle-bn-groups 32 or less",
        ),
        (
            {"negatives": "in-batch", "key_momentum": 0.9, "batch_size": 8, "shuffle_bn_groups": 9},
            r"--shuffle-bn-groups 9 .*--batch-size 8",
        ),
        (
            {"negatives": "queue+mochi", "queue_size": 64, "mix_hardest": 1000},
            r"--mix-hardest 1000 .*--queue-size 64 holds only 64: use --mix-hardest 64 or less",
        ),
        (
            {"negatives": "in-batch+mochi", "batch_size": 32, "mix_hardest": 100},
            r"--mix-hardest 100 .*2 x 32 - 2 = 62 in-batch negatives: use --mix-hardest 62 or less",
        ),
        (
            {"negatives": "queue+mochi", "epochs": 1, "mix_start_epoch": 10},
            r"--mix-start-epoch 10 would start MoCHi's mixing after the run ends \(--epochs 1\)",
        ),
        (
            {"negatives": "in-batch+mochi", "epochs": 3, "mix_start_epoch": 3},
            r"--mix-start-epoch 3 would start MoCHi's mixing after the run ends",
        ),
        (
            {"epochs": 1, "warmup_epochs": 5},
            r"--warmup-epochs 5 is longer than the run \(--epochs 1\).*use --warmup-epochs 1 or less",
        ),
    ],
)
def test_impossible_combinations_are_refused(changes: dict, message: str) -> None:
    config = TrainConfig.from_dict(changes)  # a saved config of an earlier version still loads
    with pytest.raises(ConfigError, match=message):
        check_option_combinations(config)
    with pytest.raises(ConfigError, match=message):
        check_combinations(config)  # what training runs first


@pytest.mark.parametrize(
    "changes",
    [
        {"negatives": "in-batch", "batch_size": 2, "shuffle_bn_groups": 4},  # no key encoder: unused
        {"negatives": "queue", "key_momentum": 0, "batch_size": 2, "shuffle_bn_groups": 4},
        {"negatives": "queue", "batch_size": 32, "shuffle_bn_groups": 32},
        {"negatives": "queue+mochi", "queue_size": 64, "mix_hardest": 64},
        {"negatives": "in-batch+mochi", "batch_size": 32, "mix_hardest": 62},
        {"negatives": "queue", "queue_size": 64, "mix_hardest": 1000, "mix_start_epoch": 50},  # no mixing
        {"negatives": "queue+mochi", "epochs": 2, "mix_start_epoch": 1.5},
        {"negatives": "mined+mochi", "mined_negatives": 8},  # N is capped by the mined set (banner says so)
        {"epochs": 2, "warmup_epochs": 2},  # warm-up to the last step: the peak is reached
        {"epochs": 2, "warmup_epochs": 0},
    ],
)
def test_possible_combinations_pass(changes: dict) -> None:
    check_option_combinations(TrainConfig(**changes))


def test_cli_refuses_the_combination_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--limit",
        "200",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main([*args, "--negatives", "queue", "--shuffle-bn-groups", "64"]) == 2
    assert "--shuffle-bn-groups 64" in capsys.readouterr().err
    assert main([*args, "--negatives", "queue+mochi", "--queue-size", "64", "--mix-hardest", "1000"]) == 2
    assert "--mix-hardest 1000" in capsys.readouterr().err
    assert main([*args, "--negatives", "queue+mochi", "--mix-hardest", "64", "--mix-start-epoch", "10"]) == 2
    assert "after the run ends" in capsys.readouterr().err
    assert not out.exists()


def test_yaml_exponent_floats_are_numbers(tmp_path: Path) -> None:
    """YAML 1.2 floats without a dot (PyYAML's YAML 1.1 reads '1e-3' as a string, then a wrong type)."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "lr: 1e-3\nweight_decay: 5E-4\ntemperature: .5\nepochs: 2\nout: 1e3run\n", encoding="utf-8"
    )
    values = load_config_file(path)
    assert values == {"lr": 0.001, "weight_decay": 0.0005, "temperature": 0.5, "epochs": 2, "out": "1e3run"}
    config = TrainConfig.from_dict(values)
    assert (config.lr, config.weight_decay) == (0.001, 0.0005)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.yaml", "lr: 0.1\nepochs: 2\nlr: 0.2\n", r"option lr is given twice \(line 3\); keep one"),
        (
            "c.toml",
            "batch-size = 128\nbatch_size = 64\n",
            "option batch_size is given twice, as 'batch-size' and",
        ),
        (
            "c.yaml",
            "batch-size: 128\nbatch_size: 64\n",
            "option batch_size is given twice, as 'batch-size' and",
        ),
        ("c.json", '{"lr": 1, "lr": 2}', "option lr is given twice; keep one"),
    ],
)
def test_an_option_given_twice_in_a_config_file_is_refused(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        load_config_file(path)
    assert str(path) in str(caught.value)


def test_the_banner_names_mochis_n_as_used() -> None:
    """MoCHi on mined negatives takes at most the mined set: the banner shows that N, and why."""
    from contrastkit.training.trainer import _negatives_note

    note = _negatives_note(TrainConfig(negatives="mined+mochi"), 0.0, 5, torch.device("cpu"))
    assert "mix (N, s, s')=(16, 256, 32) (N: --mix-hardest 256 capped at the mined negatives)" in note
    note = _negatives_note(TrainConfig(negatives="queue+mochi"), 0.99, 5, torch.device("cpu"))
    assert "mix (N, s, s')=(256, 256, 32)" in note and "capped" not in note


def test_options_this_run_does_not_use_are_named() -> None:
    """An option away from its default that the chosen objective / source / encoder ignores is named (it
    was accepted silently and recorded in config.yaml as if used); the options a run uses are not."""
    from contrastkit.training.config import unused_options

    assert unused_options(TrainConfig()) == []
    found = unused_options(
        TrainConfig(queue_size=100, mining="hardest", stem="imagenet", encoder="mlp", tau_plus=0.05, mix_query=4,
                    mined_reencode=True)
    )  # fmt: skip
    assert found == [
        "--tau-plus 0.05 has no effect in this run: --objective infonce does not use it (it takes --temperature)",
        "--mining hardest has no effect in this run: --objective infonce does not use it (it takes --temperature)",
        "--queue-size 100 has no effect in this run: it is used only by --negatives queue / queue+mochi",
        "--mix-query 4 has no effect in this run: it is used only by a --negatives ...+mochi source",
        "--mined-reencode True has no effect in this run: it is used only by a --negatives ...mined source",
        "--stem imagenet has no effect in this run: it is used only by the ResNet encoders",
    ]
    used = TrainConfig(objective="hcl", tau_plus=0.05, beta=0.5, negatives="queue+mochi", queue_size=512,
                       mix_query=4, mix_hardest=128, encoder="resnet18", stem="imagenet")  # fmt: skip
    assert unused_options(used) == []
    assert unused_options(TrainConfig(shuffle_bn_groups=2)) == [
        "--shuffle-bn-groups 2 has no effect in this run: it is used only by a momentum key encoder "
        "(--negatives queue, or --key-momentum above 0)"
    ]
    assert unused_options(TrainConfig(shuffle_bn_groups=2, key_momentum=0.99)) == []
    small = unused_options(TrainConfig(negatives="queue", queue_size=300, batch_size=256))
    assert len(small) == 1 and small[0].startswith("--queue-size 300 is smaller than the 512 keys one step")
    assert (
        unused_options(TrainConfig(negatives="queue", queue_size=300, batch_size=256, key_momentum=0)) == []
    )
    assert unused_options(TrainConfig(objective="triplet", temperature=0.1, margin=0.3)) == [
        "--temperature 0.1 has no effect in this run: --objective triplet does not use it (it takes --margin, "
        "--mining)"
    ]


def test_train_prints_the_unused_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--encoder", "mlp", "--epochs", "1", "--limit", "200", "--batch-size", "64", "--knn-every",
            "0", "--no-progress", "--queue-size", "100", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 0
    assert "WARNING: --queue-size 100 has no effect in this run" in capsys.readouterr().out


def test_a_run_saved_with_a_null_option_still_resumes(tmp_path: Path) -> None:
    """A run whose config file had ``batchnorm:`` (null: accepted before nulls were refused; it trained
    without BatchNorm) keeps that null in its checkpoint: its resume takes it as the run's (it was refused as
    'command line: option batchnorm is empty'); a null given on resume is still refused."""
    from contrastkit.training import train
    from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
    from contrastkit.training.resume import resume_config

    config = TrainConfig(
        data="digits", limit=256, encoder="mlp", batchnorm=False, epochs=1, batch_size=64, knn_every=0,
        progress=False, device="cpu", out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(config, out=io.StringIO()).run_dir
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"]["batchnorm"], state["finished"] = None, False  # as such a run left it
    save_checkpoint(state, run / "checkpoint.pt")
    assert resume_config(run)[0].batchnorm is None
    with pytest.raises(ConfigError, match=r"command line: option batchnorm \(--batchnorm\) is empty"):
        resume_config(run, {"batchnorm": None})
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_in_batch_mochi_under_torchrun_is_checked_against_each_process_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-batch negatives come from each process's share of the global batch: --mix-hardest 62 fits a
    batch of 32 on one process but not 16 a process on two (MoCHi took what there was, a silent cap)."""
    import contrastkit.training.trainer as trainer

    config = TrainConfig(negatives="in-batch+mochi", batch_size=32, mix_hardest=62)
    check_combinations(config)
    monkeypatch.setattr(trainer, "world_size", lambda: 2)
    with pytest.raises(
        ConfigError,
        match=r"--batch-size 32 over 2 processes gives each query only 2 x 16 - 2 = 30: use "
        r"--mix-hardest 30 or less",
    ):
        check_combinations(config)
    check_combinations(config.replace(mix_hardest=30))
    check_combinations(config, new_run=False)  # a run started before the check resumes as it ran
    check_combinations(config.replace(negatives="queue+mochi", queue_size=4096))  # not from the batch


@pytest.mark.parametrize("objective", ["margin", "debiased", "hard-negative"])
def test_objectives_that_assume_cosine_scores_are_refused_with_the_dot_score(objective: str) -> None:
    """Margin's sqrt(2 - 2s) and Debiased/HCL's floor e^{-1/t} hold for cosine scores only: with dot scores
    above 1 Margin's pull stopped (loss 0.125, gradient 0), below -1 Debiased gave loss 0, silently."""
    config = TrainConfig(objective=objective, score="dot")
    with pytest.raises(
        ConfigError, match=r"assumes cosine scores of unit vectors, but the score is --score dot"
    ):
        check_combinations(config)
    check_combinations(config, new_run=False)  # a run saved with it still resumes (the learner warns)
    check_combinations(config.replace(score="cosine"))
    check_combinations(config.replace(objective="triplet"))  # a margin in score units: any score


def test_the_learner_warns_about_an_objective_that_assumes_cosine_scores() -> None:
    import warnings

    from torch import nn

    from contrastkit.negatives import InBatchNegatives
    from contrastkit.objectives import InfoNCE, Margin
    from contrastkit.scores import CosineSimilarity, DotProduct
    from contrastkit.training.learner import ContrastiveLearner

    with pytest.warns(UserWarning, match=r"Margin assumes cosine scores .* score is DotProduct"):
        ContrastiveLearner(nn.Linear(4, 4), InBatchNegatives(), DotProduct(), Margin())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ContrastiveLearner(nn.Linear(4, 4), InBatchNegatives(), CosineSimilarity(), Margin())
        ContrastiveLearner(nn.Linear(4, 4), InBatchNegatives(), DotProduct(), InfoNCE())
