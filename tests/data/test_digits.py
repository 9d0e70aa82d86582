import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from contrastkit.data import load_digits_splits
from contrastkit.errors import ConfigError


def test_digits_shapes_values_and_names():
    s = load_digits_splits()
    assert s.name == "digits" and s.test is not None
    assert len(s.train) + len(s.test) == 1797 and len(s.test) == 450
    for ds in (s.train, s.test):
        assert ds.images.dtype == torch.uint8 and ds.image_shape == (1, 8, 8) and ds.images.is_contiguous()
        assert ds.labels.dtype == torch.int64 and ds.classes == [str(d) for d in range(10)]
    everything = torch.cat([s.train.images, s.test.images])
    assert int(everything.min()) == 0 and int(everything.max()) == 255
    names = s.train.names + s.test.names
    assert len(set(names)) == 1797 and all(n.startswith("digits/") and len(n) == 11 for n in names)

    ref = load_digits()
    for ds in (s.train, s.test):
        for i in (0, 7, len(ds) - 1):
            k = int(ds.names[i].split("/")[1])
            expect = np.round(ref.images[k] * 255 / 16).astype(np.uint8)
            assert np.array_equal(ds.images[i, 0].numpy(), expect) and int(ds.labels[i]) == ref.target[k]


def test_digits_split_is_stratified_and_seeded():
    s = load_digits_splits(test_fraction=0.25, seed=0)
    overall = np.bincount(load_digits().target) / 1797
    test_share = torch.bincount(s.test.labels).numpy() / len(s.test)
    train_share = torch.bincount(s.train.labels).numpy() / len(s.train)
    assert np.abs(test_share - overall).max() < 0.005 and np.abs(train_share - overall).max() < 0.005
    again, other = load_digits_splits(seed=0), load_digits_splits(seed=1)
    assert again.test.names == s.test.names and other.test.names != s.test.names
    assert not set(s.train.names) & set(s.test.names)


def test_digits_test_fraction():
    assert len(load_digits_splits(test_fraction=0.5).test) == 899
    whole = load_digits_splits(test_fraction=0)
    assert whole.test is None and len(whole.train) == 1797
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits_splits(test_fraction=1.0)
