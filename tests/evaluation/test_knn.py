import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from contrastkit.errors import ConfigError, DataError
from contrastkit.evaluation import knn_accuracy, knn_predict, unseen_classes_warning


@pytest.mark.parametrize("k", [1, 5, 50])
def test_weighted_knn_matches_sklearn(k):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 0.6
    train_y = torch.randint(0, 4, (300,), generator=g)
    test_y = torch.randint(0, 4, (120,), generator=g)
    train_x = centers[train_y] + torch.randn(300, 16, generator=g)
    test_x = centers[test_y] + torch.randn(120, 16, generator=g)
    t = 0.1
    ours = knn_predict(train_x, train_y, test_x, k=k, temperature=t, batch_size=37)
    # cosine distance d = 1 - s, so exp(-d/t) is proportional to exp(s/t): the same weighted vote
    clf = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=lambda d: np.exp(-d / t)
    )
    clf.fit(train_x.numpy(), train_y.numpy())
    theirs = torch.from_numpy(clf.predict(test_x.numpy()))
    assert (ours == theirs).float().mean().item() >= 0.99  # ties may break differently
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=t)
    assert acc == pytest.approx((theirs == test_y).float().mean().item(), abs=0.01)


def test_k_larger_than_train_and_shape_errors():
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    assert knn_predict(x, y, x, k=200).shape == (10,)
    with pytest.raises(DataError, match=r"\(10, 3\).*\(4, 5\)"):
        knn_predict(x, y, torch.randn(4, 5))


def test_deterministic_votes_equal_the_scatter_votes() -> None:
    """The fixed-order one-hot votes (used on CUDA under --deterministic) against scatter_add_."""
    from contrastkit.evaluation.knn import class_votes

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (50, 20), generator=g)
    weights = torch.rand(50, 20, generator=g, dtype=torch.float64) * 10
    fast = class_votes(labels, weights, 7, deterministic=False)
    fixed = class_votes(labels, weights, 7, deterministic=True)
    loop = torch.zeros(50, 7, dtype=torch.float64)
    for r in range(50):
        for j in range(20):
            loop[r, labels[r, j]] += weights[r, j]
    torch.testing.assert_close(fast, loop)
    torch.testing.assert_close(fixed, loop)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_on_cuda_is_deterministic_under_deterministic_algorithms() -> None:
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(3000, 32, generator=g), torch.randn(700, 32, generator=g)
    labels = torch.randint(0, 100, (3000,), generator=g)
    expected = knn_predict(train, labels, test, k=50)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runs = [knn_predict(train.cuda(), labels.cuda(), test.cuda(), k=50).cpu() for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(r, runs[0]) for r in runs)
    assert (runs[0] == expected).float().mean() > 0.99  # CPU vs GPU float rounding may flip a near-tie


# ------------------------------------------------------ small temperatures, non-finite features, input checks
def blobs(n_train=300, n_test=100, d=16, c=5, seed=0, spread=0.8):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * spread
    ytr = torch.randint(0, c, (n_train,), generator=g)
    yte = torch.randint(0, c, (n_test,), generator=g)
    xtr = centers[ytr] + torch.randn(n_train, d, generator=g)
    xte = centers[yte] + torch.randn(n_test, d, generator=g)
    return xtr, ytr, xte, yte


def reference_vote(xtr, ytr, xte, k, t, c):
    """Wu et al.'s weighted vote written out in float64 numpy: the k most similar training rows (cosine)
    vote with exp((s - s_max) / t), the shift by each row's largest similarity leaving the argmax as is."""
    a = F.normalize(xtr.double(), dim=1).numpy()
    b = F.normalize(xte.double(), dim=1).numpy()
    s = b @ a.T
    out = []
    for i in range(len(b)):
        nn = np.argsort(-s[i], kind="stable")[:k]
        w = np.exp((s[i, nn] - s[i, nn].max()) / t)
        votes = np.zeros(c)
        np.add.at(votes, ytr.numpy()[nn], w)
        out.append(votes.argmax())
    return torch.tensor(out)


@pytest.mark.parametrize("t", [0.01, 0.005, 0.002, 0.001])
def test_small_temperatures_do_not_overflow(t):
    xtr, ytr, xte, yte = blobs()
    ref = reference_vote(xtr, ytr, xte, 50, t, 5)
    ours = knn_predict(xtr, ytr, xte, k=50, temperature=t)
    # float32 vs float64 similarities may flip a near-tie at tiny t; exp(s/t) overflowing flips most
    assert (ours == ref).float().mean().item() >= 0.98
    acc = knn_accuracy(xtr, ytr, xte, yte, k=50, temperature=t)
    assert acc == pytest.approx((ref == yte).float().mean().item(), abs=0.02)


def unshifted_knn(xtr, ytr, xte, k, t, c):
    """The vote before the max shift: weights exp(s / t) straight (fine while s / t < 88 in float32)."""
    train = F.normalize(xtr.float(), dim=1)
    sims, idx = (F.normalize(xte.float(), dim=1) @ train.T).topk(k, dim=1)
    votes = torch.zeros(xte.shape[0], c).scatter_add_(1, ytr[idx], (sims / t).exp())
    return votes.argmax(dim=1)


@pytest.mark.parametrize(("k", "t"), [(20, 0.1), (200, 0.07), (5, 0.5), (50, 0.05), (1, 0.1)])
def test_ordinary_temperatures_give_the_same_predictions_as_the_unshifted_vote(k, t):
    xtr, ytr, xte, _ = blobs(seed=3)
    assert torch.equal(knn_predict(xtr, ytr, xte, k=k, temperature=t), unshifted_knn(xtr, ytr, xte, k, t, 5))
    assert torch.equal(knn_predict(xtr, ytr, xte, k=k, temperature=t), reference_vote(xtr, ytr, xte, k, t, 5))


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_refused_naming_the_split_and_the_rows(split, value):
    xtr, ytr, xte, yte = blobs()
    x = xtr if split == "train" else xte
    x[7, 3] = value
    x[11] = value
    n = x.shape[0]
    with pytest.raises(DataError, match=rf"{split} features contain NaN or infinity in 2 of {n} rows"):
        knn_accuracy(xtr, ytr, xte, yte)
    with pytest.raises(DataError, match=rf"{split} features contain NaN or infinity in 2 of {n} rows"):
        knn_predict(xtr, ytr, xte)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(k=0), r"k .*positive integer.*got 0"),
        (dict(k=-5), r"k .*positive integer.*got -5"),
        (dict(k=2.5), r"k .*positive integer.*got 2\.5"),
        (dict(k=True), r"k .*positive integer.*got True"),
        (dict(temperature=0), r"temperature .*finite number > 0.*got 0"),
        (dict(temperature=-0.1), r"temperature .*finite number > 0.*got -0\.1"),
        (dict(temperature=float("nan")), r"temperature .*got nan"),
        (dict(temperature=float("inf")), r"temperature .*got inf"),
        (dict(temperature="0.1"), r"temperature .*got '0\.1'"),
        (dict(batch_size=0), r"batch_size .*positive integer.*got 0"),
    ],
)
def test_bad_k_temperature_and_batch_size_are_config_errors(kw, match):
    xtr, ytr, xte, yte = blobs()
    with pytest.raises(ConfigError, match=match):
        knn_accuracy(xtr, ytr, xte, yte, **kw)
    with pytest.raises(ConfigError, match=match):
        knn_predict(xtr, ytr, xte, **kw)


def test_numpy_numbers_are_accepted_and_k_is_still_clamped():
    xtr, ytr, xte, _ = blobs()
    expected = knn_predict(xtr, ytr, xte, k=20, temperature=0.1)
    assert torch.equal(knn_predict(xtr, ytr, xte, k=np.int64(20), temperature=np.float32(0.1)), expected)
    # k above the training set: every training row votes (what evaluate/train rely on)
    assert torch.equal(knn_predict(xtr, ytr, xte, k=10_000), knn_predict(xtr, ytr, xte, k=300))


@pytest.mark.parametrize(
    ("which", "bad", "match"),
    [
        ("test", lambda y: y[:, None], r"test_labels must have shape \(100,\).*got \(100, 1\)"),
        ("test", lambda y: y[:1], r"test_labels must have shape \(100,\).*got \(1,\)"),
        ("test", lambda y: y[:50], r"test_labels must have shape \(100,\).*got \(50,\)"),
        ("train", lambda y: y[:, None], r"train_labels must have shape \(300,\).*got \(300, 1\)"),
        ("train", lambda y: y.float(), r"train_labels must be an integer tensor.*torch\.float32"),
        ("test", lambda y: y.double(), r"test_labels must be an integer tensor.*torch\.float64"),
        ("test", lambda y: y.bool(), r"test_labels must be an integer tensor.*torch\.bool"),
        ("train", lambda y: torch.where(y == 2, -1, y), r"train labels.*-1.*unknown"),
        ("test", lambda y: torch.where(y == 2, -1, y), r"test labels.*-1.*unknown"),
        ("test", lambda y: y.tolist(), r"test_labels must be a tensor.*list"),
    ],
)
def test_label_checks(which, bad, match):
    xtr, ytr, xte, yte = blobs()
    if which == "train":
        ytr = bad(ytr)
    else:
        yte = bad(yte)
    with pytest.raises(DataError, match=match):
        knn_accuracy(xtr, ytr, xte, yte)


def test_train_label_checks_in_knn_predict():
    xtr, ytr, xte, _ = blobs()
    with pytest.raises(DataError, match=r"train labels.*-1.*unknown"):
        knn_predict(xtr, torch.where(ytr == 0, -1, ytr), xte)
    with pytest.raises(DataError, match=r"train_labels must be an integer tensor.*torch\.float32"):
        knn_predict(xtr, ytr.float(), xte)
    with pytest.raises(ConfigError, match=r"num_classes is 2 but the train labels go up to 4"):
        knn_predict(xtr, ytr, xte, num_classes=2)
    with pytest.raises(ConfigError, match=r"num_classes must be a positive integer"):
        knn_predict(xtr, ytr, xte, num_classes=0)
    # a larger num_classes is fine: the extra classes get no votes
    assert torch.equal(knn_predict(xtr, ytr, xte, num_classes=9), knn_predict(xtr, ytr, xte))


def test_integer_label_dtypes_give_the_same_accuracy():
    xtr, ytr, xte, yte = blobs()
    expected = knn_accuracy(xtr, ytr, xte, yte, k=20)
    for dt in (torch.int32, torch.int16, torch.uint8, torch.int8):
        assert knn_accuracy(xtr, ytr.to(dt), xte, yte.to(dt), k=20) == expected
        assert torch.equal(knn_predict(xtr, ytr.to(dt), xte, k=20), knn_predict(xtr, ytr, xte, k=20))


def test_empty_splits():
    xtr, ytr, xte, yte = blobs()
    with pytest.raises(DataError, match=r"the test split is empty"):
        knn_accuracy(xtr, ytr, xte[:0], yte[:0])
    with pytest.raises(DataError, match=r"the train split is empty"):
        knn_accuracy(xtr[:0], ytr[:0], xte, yte)
    with pytest.raises(DataError, match=r"the train split is empty"):
        knn_predict(xtr[:0], ytr[:0], xte)
    empty = knn_predict(xtr, ytr, xte[:0])
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_feature_shape_errors_are_data_errors():
    xtr, ytr, xte, yte = blobs()
    with pytest.raises(DataError, match=r"\(300, 16\).*\(100, 8\)"):
        knn_accuracy(xtr, ytr, xte[:, :8], yte)
    with pytest.raises(DataError, match=r"\(300, 16, 1\)"):
        knn_predict(xtr[:, :, None], ytr, xte)


def test_unseen_classes_warning_counts_the_eval_images_no_vote_can_reach():
    train_y = torch.tensor([0, 0, 1, 1])
    test_y = torch.tensor([0, 1, 2, 2, 3, 1, 0, 0])
    names = ["zero", "one", "two", "three"]
    warning = unseen_classes_warning(train_y, test_y, names, "do this")
    assert warning is not None and warning.startswith("2 class(es) of the eval images have no training image")
    assert "('two', 'three')" in warning and "their 3 of 8 eval images" in warning
    assert "at most 0.6250 whatever the encoder; do this" in warning
    # no kNN can beat that cap: every unseen-class image is misclassified
    feats = torch.randn(8, 4)
    acc = knn_accuracy(torch.randn(4, 4), train_y, feats, test_y, k=4)
    assert acc <= 0.625
    assert unseen_classes_warning(train_y, torch.tensor([1, 0, 1]), names, "x") is None


def test_sparse_class_ids_are_refused_but_up_to_65536_classes_are_taken():
    xtr, ytr, xte, yte = blobs()
    with pytest.raises(
        DataError,
        match=r"class indices 0 \.\. C-1, but the largest is 400000 for 400 labelled items.*return_inverse",
    ):
        knn_accuracy(xtr, ytr * 10**5, xte, yte * 10**5)
    with pytest.raises(DataError, match=r"the largest is 400000 for 300 labelled"):
        knn_predict(xtr, ytr * 10**5, xte)
    wide = knn_predict(xtr, ytr * 16000, xte, k=20)  # largest 64000 < 2**16: votes over 64,001 slots
    assert torch.equal(wide, knn_predict(xtr, ytr, xte, k=20) * 16000)


def test_extract_features_of_no_images_is_a_clear_error():
    from contrastkit.evaluation import extract_features

    with pytest.raises(ConfigError, match=r"no images to extract features from \(shape \(0, 1, 8, 8\)\)"):
        extract_features(
            lambda x: x, torch.zeros(0, 1, 8, 8, dtype=torch.uint8), transform=lambda x: x.float()
        )


def test_many_classes_on_few_items_pass_with_num_classes_given():
    xtr, ytr, xte, yte = blobs()
    with pytest.raises(DataError, match="the largest is 400000"):
        knn_accuracy(xtr, ytr * 10**5, xte, yte * 10**5, k=20)
    wide = knn_accuracy(xtr, ytr * 10**5, xte, yte * 10**5, k=20, num_classes=400_001)
    assert wide == knn_accuracy(xtr, ytr, xte, yte, k=20)
