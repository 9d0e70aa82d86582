"""The option checks shared by the commands' configs (contrastkit.training.options)."""

from __future__ import annotations

import math

import pytest

from contrastkit.clustering.run import SelaConfig
from contrastkit.errors import ConfigError
from contrastkit.training.audio import AudioTrainConfig
from contrastkit.training.options import check_lr_and_weight_decay

CONFIGS = [AudioTrainConfig, SelaConfig]


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("lr", [-1.0, 0.0, math.nan, math.inf])
def test_learning_rate_must_be_positive_and_finite(cls: type, lr: float) -> None:
    with pytest.raises(ConfigError, match=r"option lr \(--lr\) must be a positive number"):
        cls(lr=lr)


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("wd", [-1.0, math.nan, math.inf])
def test_weight_decay_must_be_finite_and_not_negative(cls: type, wd: float) -> None:
    with pytest.raises(ConfigError, match=r"option weight_decay \(--weight-decay\) must be a number >= 0"):
        cls(weight_decay=wd)


def test_derived_values_and_good_ones_pass() -> None:
    check_lr_and_weight_decay(None, None)  # both derived from the optimizer
    check_lr_and_weight_decay(0.3, 0.0)
    assert SelaConfig(lr=0.1, weight_decay=1e-4).lr == 0.1


@pytest.mark.parametrize("cls", [*CONFIGS, "train", "text"])
@pytest.mark.parametrize("seed", [-1, 2**32, 10**20, 1.5, True, "0"])
def test_seeds_must_be_integers_in_numpys_range(cls: type | str, seed: object, tmp_path) -> None:
    """A negative or huge --seed failed late with a traceback (numpy, k-means, torch's int64) in every
    command, and ``train --seed -1`` ran, leaving a run whose ``eval --geometry`` crashed. ``train`` checks
    a new run's seed when it starts (a run saved with -1 before the check still loads), before its folder."""
    from contrastkit.training import TrainConfig, train
    from contrastkit.training.text import TextTrainConfig

    message = r"option seed \(--seed\) must be an integer in \[0, 2\*\*32\)"
    if cls == "train":
        config = TrainConfig(seed=seed, out=str(tmp_path / "r"))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=message):
            train(config)
        assert not (tmp_path / "r").exists()
        return
    make = {"text": TextTrainConfig}.get(cls, cls)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match=message):
        make(seed=seed)
    assert make(seed=2**32 - 1).seed == 2**32 - 1


def test_a_run_saved_with_seed_minus_one_still_loads() -> None:
    """Saved before --seed was checked: eval, export, report and --resume read its config as it ran."""
    from contrastkit.training import TrainConfig

    assert TrainConfig.from_dict({"seed": -1, "split_seed": 0}, saved_run=True).seed == -1
