import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from contrastkit.evaluation import knn_accuracy, knn_predict


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
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(4, 5\)"):
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
