import pytest

from contrastkit.errors import ConfigError
from contrastkit.training.config import TrainConfig, load_config_file


def test_defaults_are_valid():
    c = TrainConfig()
    assert c.data == "digits" and c.objective == "infonce" and c.temperature == 0.2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": -3}, "--batch-size"),
        ({"temperature": 0.0}, "--temperature"),
        ({"flip_p": 1.5}, "--flip-p"),
        ({"optimizer": "rmsprop"}, "sgd, lars, adamw"),
        ({"device": "tpu"}, "cuda:N"),
        ({"crop_min_scale": 0}, "crop-min-scale"),
        ({"checkpoint_every": -1}, r"--checkpoint-every\) must be an integer >= 0"),
        ({"views": "simsiam"}, r"--views\) must be one of: simclr, simclr_imagenet, mocov2, byol"),
        ({"jitter": -0.1}, r"--jitter\) must be a number >= 0"),
        ({"grayscale_p": 2.0}, r"--grayscale-p\) must be a number in \[0, 1\]"),
        ({"workers": -2}, r"--workers\) must be an integer >= 0"),
        ({"knn_images": 0}, r"--knn-images\) must be a positive integer"),
        ({"data_placement": "gpu"}, r"--data-placement\) must be one of: auto, device, host, stream"),
        ({"mix_hardest": 0}, r"--mix-hardest\) must be an integer >= 1"),
        ({"mix_synthetic": -1}, r"--mix-synthetic\) must be an integer >= 0"),
        ({"mix_query": 1.5}, r"--mix-query\) must be an integer >= 0"),
    ],
)
def test_bad_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_files_toml_yaml_and_unknown_keys(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('epochs = 3\nbatch-size = 64\noptimizer = "lars"\n')
    yml = tmp_path / "a.yaml"
    yml.write_text("epochs: 4\ntemperature: 0.2\n")
    assert TrainConfig.from_dict(load_config_file(toml)).batch_size == 64
    assert TrainConfig.from_dict(load_config_file(yml)).temperature == 0.2
    with pytest.raises(ConfigError, match=r"unknown option.*epoch_count"):
        TrainConfig.from_dict({"epoch_count": 3})
    with pytest.raises(ConfigError, match="wrong type"):
        TrainConfig.from_dict({"epochs": "ten"})
    bad = tmp_path / "b.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.toml"):
        load_config_file(tmp_path.joinpath("c.ini").write_text("x") and tmp_path / "c.ini")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"queue_size": 0}, "--queue-size"),
        ({"key_momentum": 1.5}, "--key-momentum"),
        ({"mix_start_epoch": -1}, "--mix-start-epoch"),
        ({"shuffle_bn_groups": 0}, "--shuffle-bn-groups"),
        ({"oracle": True, "objective": "supcon"}, "--oracle.*--objective supcon"),
    ],
)
def test_negative_source_options_are_checked(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_key_momentum_defaults_to_queue_sources_only():
    assert TrainConfig(negatives="queue").resolved_key_momentum() == 0.99
    assert TrainConfig(negatives="queue+mochi").resolved_key_momentum() == 0.99
    assert TrainConfig(negatives="in-batch").resolved_key_momentum() == 0.0
    assert TrainConfig(negatives="queue", key_momentum=0).resolved_key_momentum() == 0.0
    assert TrainConfig(negatives="in-batch", key_momentum=0.9).resolved_key_momentum() == 0.9
    assert TrainConfig.from_dict({"mix_start_epoch": 2, "key_momentum": 0.5}).mix_start_epoch == 2.0
