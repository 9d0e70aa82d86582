import math

import pytest

from contrastkit.errors import ConfigError
from contrastkit.objectives import (
    OBJECTIVES,
    Debiased,
    Decoupled,
    HardNegative,
    InfoNCE,
    Margin,
    SupervisedContrastive,
    Triplet,
    build_objective,
)

# what the training step passes for every objective (training/trainer.py)
TRAINER_PARAMS = {"temperature": 0.2, "tau_plus": 0.05, "beta": 0.5, "margin": 0.3, "mining": "hardest"}


def test_registered_names():
    assert OBJECTIVES == {
        "infonce": InfoNCE,
        "triplet": Triplet,
        "margin": Margin,
        "debiased": Debiased,
        "decoupled": Decoupled,
        "hard-negative": HardNegative,
        "hcl": HardNegative,
        "supcon": SupervisedContrastive,
    }


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_build_passes_only_accepted_params(name):
    obj = build_objective(name, **TRAINER_PARAMS, unrelated=1)
    assert isinstance(obj, OBJECTIVES[name])
    for key, value in TRAINER_PARAMS.items():
        if hasattr(obj, key):
            assert getattr(obj, key) == value


def test_none_params_fall_back_to_defaults():
    assert build_objective("debiased", temperature=None, tau_plus=None).tau_plus == 0.1
    assert build_objective("triplet", mining=None).mining == "all"


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (InfoNCE, {"temperature": 0}, r"temperature must be a finite number > 0, got 0"),
        (Decoupled, {"temperature": -1.0}, r"temperature .*> 0"),
        (SupervisedContrastive, {"temperature": math.nan}, r"temperature .*> 0"),
        (Debiased, {"temperature": True}, r"temperature .*> 0"),
        (Debiased, {"tau_plus": 1.0}, r"tau_plus .*in \[0, 1\)"),
        (Debiased, {"tau_plus": -0.1}, r"tau_plus .*in \[0, 1\)"),
        (HardNegative, {"tau_plus": 1.5}, r"tau_plus .*in \[0, 1\)"),
        (HardNegative, {"beta": -0.5}, r"beta .*>= 0"),
        (HardNegative, {"temperature": 0.0}, r"temperature .*> 0"),
        (Triplet, {"margin": 0}, r"margin .*> 0"),
        (Triplet, {"mining": "hard"}, r"mining must be one of 'all', 'hardest', 'semi-hard'; got 'hard'"),
        (Triplet, {"reduction": "sum"}, r"reduction must be one of 'mean', 'non-zero'"),
        (Margin, {"margin": -1.0}, r"margin .*> 0"),
        (Margin, {"margin": "1"}, r"margin .*> 0"),
    ],
)
def test_bad_constructor_args_name_parameter_and_range(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_unknown_objective_lists_choices():
    with pytest.raises(ConfigError, match="hard-negative"):
        build_objective("nope")
