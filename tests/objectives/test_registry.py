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
    """Parameters of other objectives are ignored: the trainers pass one common set to every objective."""
    obj = build_objective(name, **TRAINER_PARAMS)
    assert isinstance(obj, OBJECTIVES[name])
    for key, value in TRAINER_PARAMS.items():
        if hasattr(obj, key):
            assert getattr(obj, key) == value


# what each caller of build_objective passes (training/trainer.py, training/text.py, training/audio.py)
CALLER_PARAMS = {
    "trainer": TRAINER_PARAMS,
    "text": {"temperature": 0.2, "tau_plus": 0.05, "beta": 0.5, "margin": 0.3},
    "audio": {"temperature": 0.2},
}


@pytest.mark.parametrize("caller", list(CALLER_PARAMS))
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_caller_param_set_builds_every_objective(name, caller):
    assert isinstance(build_objective(name, **CALLER_PARAMS[caller]), OBJECTIVES[name])
    assert isinstance(build_objective(name, **dict.fromkeys(CALLER_PARAMS[caller])), OBJECTIVES[name])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_a_parameter_no_objective_takes_is_a_config_error(name):
    """QA finding 7: ``temprature=0.5`` was dropped silently (the default temperature was used)."""
    with pytest.raises(ConfigError, match=r"unknown parameter 'temprature' for objective") as err:
        build_objective(name, temprature=0.5)
    # the message names the parameters this objective takes
    for param in ("temperature", "margin", "tau_plus", "beta", "mining"):
        if hasattr(OBJECTIVES[name](), param):
            assert param in str(err.value).split("(")[0], (param, str(err.value))
    with pytest.raises(ConfigError, match=r"unknown parameters 'typo', 'unrelated'"):
        build_objective(name, unrelated=1, typo=None, temperature=0.2)


def test_unknown_parameter_message():
    with pytest.raises(ConfigError) as err:
        build_objective("infonce", temprature=0.5)
    assert str(err.value) == (
        "unknown parameter 'temprature' for objective 'infonce'; it takes temperature "
        "(parameters of any objective: beta, margin, mining, reduction, tau_plus, temperature)"
    )


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
