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
