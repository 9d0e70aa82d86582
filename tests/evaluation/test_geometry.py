"""Alignment, uniformity and cluster scores against float64 loops, scipy's pdist and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from contrastkit.encoders import ContrastiveModel, ProjectionHead, SmallCNN
from contrastkit.errors import ConfigError, DataError
from contrastkit.evaluation import alignment, cluster_scores, embedding_geometry, uniformity
from contrastkit.views import ImageViews, eval_transform

pytestmark = pytest.mark.usefixtures("one_thread")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_loop(alpha):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    a, b = unit(z1.double().numpy()), unit(z2.double().numpy())
    expected = sum(np.linalg.norm(a[i] - b[i]) ** alpha for i in range(50)) / 50
    assert alignment(z1, z2, alpha=alpha) == pytest.approx(expected, rel=1e-5)
    assert alignment(z1, z1) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("t", "block"), [(2.0, 7), (2.0, 1024), (0.5, 13), (5.0, 64)])
def test_uniformity_matches_pdist(t, block):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(131, 16, generator=g)
    x = unit(z.double().numpy())
    expected = math.log(np.mean(np.exp(-t * pdist(x, "sqeuclidean"))))
    assert uniformity(z, t=t, block_size=block) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_uniformity_is_stable_where_the_direct_formula_underflows():
    # orthonormal points: every pair has d^2 = 2, and exp(-60 * 2) underflows in float32
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    z = q.float()
    t = 60.0
    direct32 = torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log().item()
    assert direct32 == -math.inf
    d2 = pdist(q.numpy(), "sqeuclidean")
    expected = float(np.logaddexp.reduce(-t * d2) - math.log(d2.size))  # float64 log-space reference
    assert expected == pytest.approx(-2 * t, rel=1e-9)
    assert uniformity(z, t=t) == pytest.approx(expected, rel=1e-5)


def test_uniformity_of_collapsed_and_two_points():
    z = torch.ones(10, 4)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-6)
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # d^2 = 2
    assert uniformity(two, t=2.0) == pytest.approx(-4.0, abs=1e-6)


def test_cluster_scores_match_sklearn():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(5, 12, generator=g)
    y = torch.randint(0, 5, (200,), generator=g)
    h = centers[y] + 0.8 * torch.randn(200, 12, generator=g)
    res = cluster_scores(h, y, seed=4)
    x = unit(h.double().numpy())
    pred = KMeans(n_clusters=5, n_init=10, random_state=4).fit_predict(x)
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score(y.numpy(), pred), abs=1e-9)
    assert res["ari"] == pytest.approx(adjusted_rand_score(y.numpy(), pred), abs=1e-9)
    assert res["protocol"]["num_clusters"] == 5
    # relabelling the classes changes nothing; unknown labels are left out
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert cluster_scores(h, perm[y], seed=4)["nmi"] == pytest.approx(res["nmi"])
    separated = torch.eye(4).repeat_interleave(10, 0) * 10 + 0.01 * torch.randn(40, 4, generator=g)
    labels = torch.arange(4).repeat_interleave(10)
    perfect = cluster_scores(separated, labels)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    labels_unknown = labels.clone()
    labels_unknown[:10] = -1
    assert cluster_scores(separated, labels_unknown)["protocol"]["points"] == 30


def test_bad_inputs():
    with pytest.raises(DataError, match="equal shape"):
        alignment(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(DataError, match="at least 2"):
        uniformity(torch.randn(1, 3))
    with pytest.raises(ConfigError, match="t must be"):
        uniformity(torch.randn(4, 3), t=0)
    with pytest.raises(DataError, match="one label per embedding"):
        cluster_scores(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


def test_embedding_geometry_of_a_tiny_model():
    torch.manual_seed(0)
    backbone = SmallCNN(1, width=4)
    model = ContrastiveModel(backbone, ProjectionHead(backbone.feature_dim, 16, 8))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(30) % 3
    views = ImageViews(8, scale=(0.5, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    kw = dict(views=views, transform=lambda x: eval_transform(x), seed=7)
    a = embedding_geometry(model, images, labels, **kw)
    b = embedding_geometry(model, images, labels, **kw)
    assert a == b  # seeded views, deterministic k-means
    assert 0.0 <= a["alignment"] <= 4.0 and -4.0 <= a["uniformity"] <= 0.0
    assert 0.0 <= a["kmeans_nmi"] <= 1.0 and -1.0 <= a["kmeans_ari"] <= 1.0
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        z = model(eval_transform(images))
    assert a["uniformity"] == pytest.approx(uniformity(z), rel=1e-5)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_zero_block_or_batch_size_is_a_config_error(bad):
    from contrastkit.evaluation import extract_features, knn_predict

    z = torch.randn(8, 4)
    with pytest.raises(ConfigError, match="block_size"):
        uniformity(z, block_size=bad)
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(lambda x: x.flatten(1), images, transform=lambda x: x.float(), batch_size=bad)
    with pytest.raises(ConfigError, match="batch_size"):
        knn_predict(z, torch.arange(8) % 2, z, num_classes=2, k=3, batch_size=bad)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_unnormalised_uniformity_far_from_the_origin_matches_pdist(offset):
    """normalize=False: d² expanded as ‖x‖² + ‖y‖² − 2xᵀy in float32 was 20% off at offset 1000."""
    g = torch.Generator().manual_seed(3)
    z = offset + 0.05 * torch.randn(400, 64, generator=g)
    d2 = pdist(z.double().numpy(), "sqeuclidean")
    expected = float(np.logaddexp.reduce(-2.0 * d2) - math.log(d2.size))
    assert uniformity(z, normalize=False, block_size=128) == pytest.approx(expected, rel=1e-5)


def test_uniformity_reaches_its_small_n_bound():
    """The range is [−2tN/(N − 1), 0], not [−4, 0]: two antipodal unit vectors give −8 at t = 2."""
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0, abs=1e-6)


def test_cluster_scores_refuse_untyped_or_float_labels_and_warn_on_one_class():
    z = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match=r"labels must be a torch tensor, got ndarray.*torch\.as_tensor"):
        cluster_scores(z, np.zeros(20, dtype=np.int64))
    with pytest.raises(DataError, match=r"integer tensor of class indices.*float32.*labels\.long\(\)"):
        cluster_scores(z, torch.arange(20).float() / 10)
    with pytest.warns(UserWarning, match="single class, so NMI and ARI measure nothing"):
        scores = cluster_scores(z, torch.zeros(20, dtype=torch.long))
    assert scores["nmi"] == 1.0 and scores["ari"] == 1.0  # what sklearn gives: hence the warning
