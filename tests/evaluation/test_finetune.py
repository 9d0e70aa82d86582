"""Few-label fine-tuning: the labelled subset, learning on digits, and the caller's model left untouched."""

import math

import pytest
import torch

from contrastkit.data import channel_stats, load_dataset
from contrastkit.encoders import SmallCNN
from contrastkit.errors import ConfigError, DataError
from contrastkit.evaluation import few_label_subset, finetune, finetune_few_labels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset("digits")
    mean, std = channel_stats(splits.train)
    return splits, mean, std


def test_subset_is_class_balanced_and_seeded(digits):
    labels = digits[0].train.labels
    for fraction in (0.01, 0.1):
        idx = few_label_subset(labels, fraction, seed=0)
        assert idx.numel() == round(fraction * labels.numel())
        counts = torch.bincount(labels[idx], minlength=10)
        assert counts.max() - counts.min() <= 1
        assert torch.equal(idx, few_label_subset(labels, fraction, seed=0))
        assert not torch.equal(idx, few_label_subset(labels, fraction, seed=1))
        assert idx.unique().numel() == idx.numel()
    # unknown labels (-1) are never picked
    y = labels.clone()
    y[::2] = -1
    idx = few_label_subset(y, 0.1, seed=0)
    assert idx.numel() == round(0.1 * int((y >= 0).sum())) and bool((y[idx] >= 0).all())
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="fraction"):
            few_label_subset(labels, bad)


def test_finetuning_learns_digits_on_a_copy(digits):
    splits, mean, std = digits
    torch.manual_seed(0)
    backbone = SmallCNN(1, width=8)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    data = (splits.train.images, splits.train.labels, splits.test.images, splits.test.labels)
    kw = dict(mean=mean, std=std, crop_scale=(0.5, 1.0), flip_p=0.0, optimizer="sgd", lr=0.1, epochs=12)
    res = finetune(backbone, *data, fraction=0.1, batch_size=32, **kw)
    assert res.top1 > 0.5  # chance is 0.1
    # the caller's model is untouched; the fine-tuned copy's weights moved
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert res.model.backbone is not backbone
    tuned = res.model.backbone.state_dict()
    moved = [
        k
        for k, v in before.items()
        if v.is_floating_point() and v.ndim > 1 and not torch.allclose(v, tuned[k])
    ]
    assert len(moved) == sum(1 for v in before.values() if v.is_floating_point() and v.ndim > 1)
    p = res.protocol
    assert (p["labelled_images"], p["epochs"], p["batch_size"], p["lr"]) == (135, 12, 32, 0.1)
    assert p["steps"] == 12 * (135 // 32)
    assert max(p["labels_per_class"]) - min(p["labels_per_class"]) <= 1
    assert res.to_dict()["top1"] == res.top1
    # same seed, same result
    again = finetune(backbone, *data, fraction=0.1, batch_size=32, **kw)
    assert again.top1 == res.top1


def test_paper_defaults_and_bf16_autocast(digits):
    splits, mean, std = digits
    torch.manual_seed(0)
    backbone = SmallCNN(1, width=4)
    results = finetune_few_labels(
        backbone,
        splits.train.images,
        splits.train.labels,
        splits.test.images[:60],
        splits.test.labels[:60],
        fractions=(0.01,),
        mean=mean,
        std=std,
        autocast_dtype=torch.bfloat16,
    )
    (r,) = results
    # SimCLRv2: 60 epochs at 1%, LARS at 0.005 * sqrt(batch), batch = the whole (13-image) subset
    assert (r.fraction, r.protocol["epochs"], r.protocol["batch_size"]) == (0.01, 60, 13)
    assert r.protocol["lr"] == pytest.approx(0.005 * math.sqrt(13))
    assert r.protocol["optimizer"].startswith("lars") and r.protocol["weight_decay"] == 0.0
    assert r.protocol["precision"] == "bf16 autocast" and math.isfinite(r.protocol["final_train_loss"])
    assert 0.0 <= r.top1 <= 1.0


def test_too_few_labels_is_a_clear_error(digits):
    splits, _, _ = digits
    # 1 image: one message for both rules, naming the smallest fraction (round(0.00706 x 1347) = 10)
    with pytest.raises(
        ConfigError,
        match=r"is 1 image\(s\) for 10 classes, fewer than one per class.*at least 2 images \(BatchNorm\)\. "
        r"Use a fraction of at least 0\.00706 \(10 images\)",
    ):
        finetune(
            SmallCNN(1, width=4),
            splits.train.images,
            splits.train.labels,
            splits.test.images,
            splits.test.labels,
            fraction=0.0005,
        )


def test_subset_seed_chooses_the_labels_and_seed_the_training(digits, monkeypatch):
    """``subset_seed`` picks the labelled images (runs of several seeds share them), ``seed`` the rest."""
    import sys

    finetune_module = sys.modules["contrastkit.evaluation.finetune"]  # (the package exports the function)
    splits, mean, std = digits
    chosen = []
    real = finetune_module.few_label_subset

    def spy(labels, fraction, seed=0):
        chosen.append(seed)
        return real(labels, fraction, seed)

    monkeypatch.setattr(finetune_module, "few_label_subset", spy)
    torch.manual_seed(0)
    backbone = SmallCNN(1, width=4)
    data = (splits.train.images, splits.train.labels, splits.test.images, splits.test.labels)
    kw = dict(mean=mean, std=std, fraction=0.1, epochs=1, batch_size=64, optimizer="sgd", lr=0.1)
    a = finetune(backbone, *data, seed=1, subset_seed=0, **kw)
    b = finetune(backbone, *data, seed=1, **kw)  # subset_seed defaults to seed
    assert chosen == [0, 1]
    assert "seed 0" in a.protocol["subset"] and "seed 1" in b.protocol["subset"]


def test_bad_labels_are_refused_before_any_training(digits):
    splits, _, _ = digits
    tr, te = splits.train, splits.test
    args = (SmallCNN(1, width=4), tr.images)
    with pytest.raises(DataError, match=r"train labels must be an integer tensor.*float32"):
        finetune(*args, tr.labels.float(), te.images, te.labels, fraction=0.1)
    with pytest.raises(DataError, match=r"train labels must be a torch tensor, got ndarray"):
        finetune(*args, tr.labels.numpy(), te.images, te.labels, fraction=0.1)
    with pytest.raises(ConfigError, match=r"num_classes is 2 but the train/test labels go up to 9"):
        finetune(*args, tr.labels, te.images, te.labels, fraction=0.1, num_classes=2)
    sparse = tr.labels * 10**6  # class codes, not indices: 9,000,001 head outputs
    with pytest.raises(DataError, match=r"class indices 0 \.\. C-1, but the largest is 9000000"):
        finetune(*args, sparse, te.images, te.labels * 10**6, fraction=0.1)
