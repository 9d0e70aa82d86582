import numpy as np
import pytest
import torch

from contrastkit.data import (
    KNOWN_DATASETS,
    MIN_STD,
    DataSplits,
    ImageDataset,
    balanced_indices,
    channel_stats,
    load_dataset,
    resize_images,
)
from contrastkit.errors import ConfigError, DataError


def make(n=6, c=3, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(
        images=torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8),
        labels=torch.arange(n, dtype=torch.int64) % 3,
        classes=["a", "b", "c"],
        names=[f"img{i}" for i in range(n)],
    )


def test_basics():
    ds = make()
    assert len(ds) == 6 and ds.image_shape == (3, 4, 5)


def test_non_contiguous_images_are_made_contiguous():
    base = make()
    nc = ImageDataset(base.images.permute(0, 1, 3, 2), base.labels, base.classes, base.names)
    assert nc.images.is_contiguous() and nc.image_shape == (3, 5, 4)
    assert torch.equal(nc.images, base.images.permute(0, 1, 3, 2))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"images": torch.zeros(2, 3, 4, 4)}, "uint8"),
        ({"images": torch.zeros(2, 4, 4, dtype=torch.uint8)}, r"\(N, C, H, W\)"),
        ({"images": torch.zeros(2, 2, 4, 4, dtype=torch.uint8)}, "channels"),
        ({"labels": torch.zeros(2, dtype=torch.int32)}, "int64"),
        ({"labels": torch.zeros(3, dtype=torch.int64)}, "one label and one name"),
        ({"names": ["x"]}, "one label and one name"),
        ({"labels": torch.tensor([0, 5])}, r"labels must lie in \[-1, 1\]"),
        ({"labels": torch.tensor([0, -2])}, "labels must lie"),
    ],
)
def test_validation(change, match):
    kw = dict(
        images=torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
        labels=torch.tensor([0, 1]),
        classes=["a", "b"],
        names=["x", "y"],
    )
    kw.update(change)
    with pytest.raises(DataError, match=match):
        ImageDataset(**kw)


def test_unknown_labels_are_allowed():
    ds = ImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([-1, -1]), [], ["x", "y"])
    assert ds.labels.tolist() == [-1, -1]


def test_subset_with_list_tensor_and_mask():
    ds = make()
    for idx in ([4, 1], torch.tensor([4, 1]), np.array([4, 1])):
        sub = ds.subset(idx)
        assert sub.names == ["img4", "img1"] and sub.labels.tolist() == [1, 1]
        assert torch.equal(sub.images, ds.images[[4, 1]]) and sub.classes == ds.classes
    mask = torch.tensor([True, False, False, True, False, False])
    assert ds.subset(mask).names == ["img0", "img3"]
    assert len(ds.subset([])) == 0 and ds.subset([]).image_shape == (3, 4, 5)
    with pytest.raises(DataError, match="mask"):
        ds.subset(torch.tensor([True]))


def test_splits_must_agree():
    a = make()
    other = ImageDataset(a.images, a.labels, ["a", "b", "z"], a.names)
    with pytest.raises(DataError, match="classes"):
        DataSplits(train=a, test=other, name="x")
    with pytest.raises(DataError, match="image-size"):
        DataSplits(train=a, test=make(h=7), name="x")
    assert DataSplits(train=a, test=None, name="x").test is None


def test_channel_stats_matches_numpy():
    ds = make(n=37, c=3, h=5, w=6, seed=1)
    mean, std = channel_stats(ds, chunk_size=4)
    x = ds.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-9)
    assert all(isinstance(v, float) for v in mean + std) and len(mean) == 3


def test_channel_stats_grayscale_constant_and_empty():
    const = ImageDataset(
        torch.full((3, 1, 2, 2), 51, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"], list("xyz")
    )
    mean, std = channel_stats(const)
    assert mean == pytest.approx((0.2,)) and std == (MIN_STD,)
    with pytest.raises(DataError, match="empty"):
        channel_stats(make().subset([]))


def test_balanced_indices():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    idx = balanced_indices(labels, 10, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 2]
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 10
    assert torch.equal(idx, balanced_indices(labels, 10, seed=0))
    assert not torch.equal(idx, balanced_indices(labels, 10, seed=1))
    odd = balanced_indices(labels, 7, seed=5)
    assert sorted(torch.bincount(labels[odd], minlength=3).tolist()) == [2, 2, 3]
    assert balanced_indices(labels, 100).tolist() == list(range(22))
    unknown = torch.tensor([-1] * 6 + [0] * 6)
    assert torch.bincount(unknown[balanced_indices(unknown, 4)] + 1).tolist() == [2, 2]


def test_resize_images():
    x = make(n=2, c=1, h=4, w=6).images
    y = resize_images(x, 3)
    assert y.shape == (2, 1, 3, 3) and y.dtype == torch.uint8 and y.is_contiguous()
    assert resize_images(make().images, 9).shape == (6, 3, 9, 9)
    same = make(h=5, w=5).images
    assert resize_images(same, 5) is same


def test_load_dataset_digits_with_limit_and_image_size():
    assert KNOWN_DATASETS == ("digits",)
    s = load_dataset("digits", limit=50, image_size=12, seed=1)
    assert s.name == "digits" and len(s.train) == 50 and len(s.test) == 50
    assert s.train.image_shape == (1, 12, 12) and s.test.image_shape == (1, 12, 12)
    assert torch.bincount(s.train.labels).tolist() == [5] * 10
    again = load_dataset("digits", limit=50, image_size=12, seed=1)
    assert again.train.names == s.train.names and torch.equal(again.train.images, s.train.images)


def test_load_dataset_path_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="limit"):
        load_dataset("digits", limit=0)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", image_size=0)


def test_held_out_indices_stratifies_when_it_can_and_splits_plainly_when_not():
    from sklearn.model_selection import train_test_split

    from contrastkit.data.dataset import held_out_indices

    y = np.repeat(np.arange(5), 10)  # 50 items, 5 classes of 10: stratified, as scikit-learn does it
    keep, held = held_out_indices(y, 0.2, seed=3)
    ref_keep, ref_held = train_test_split(np.arange(50), test_size=0.2, random_state=3, stratify=y)
    assert keep.tolist() == ref_keep.tolist() and held.tolist() == ref_held.tolist()
    assert sorted(np.bincount(y[held]).tolist()) == [2] * 5
    # 20 items of 10 classes hold out 4 < 10 classes: stratification is impossible (scikit-learn raises
    # ValueError), a plain seeded split is made instead
    y = np.repeat(np.arange(10), 2)
    with pytest.raises(ValueError):
        train_test_split(np.arange(20), test_size=0.2, random_state=0, stratify=y)
    keep, held = held_out_indices(y, 0.2, seed=0)
    assert len(held) == 4 and sorted(keep.tolist() + held.tolist()) == list(range(20))
    assert held.tolist() == held_out_indices(y, 0.2, seed=0)[1].tolist()  # seeded


def test_held_out_indices_refuses_too_few_items():
    from contrastkit.data.dataset import held_out_indices

    with pytest.raises(DataError, match=r"imgs has no test split and 1 labelled item\(s\).*at least 2"):
        held_out_indices(np.array([0]), 0.2, seed=0, what="imgs")
