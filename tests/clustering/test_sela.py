"""Self-labelling: heads, the shared (cross-view / cross-modal) Sinkhorn assignment, a training run on
images and on audio, two tied encoders, and the ``sela`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from contrastkit.cli import main
from contrastkit.clustering import ClusteringHeads, SelfLabelling, random_equipartition, train_self_labelling
from contrastkit.encoders import MLP, SmallCNN
from contrastkit.encoders.audio import AudioCNN
from contrastkit.errors import ConfigError
from contrastkit.views import ImageViews
from contrastkit.views.audio import AudioViews


def test_heads_and_initial_labels() -> None:
    heads = ClusteringHeads(8, 5, num_heads=3, hidden_dim=16)
    assert heads(torch.randn(4, 8)).shape == (3, 4, 5)
    labels = random_equipartition(2, 23, 5, torch.Generator().manual_seed(0))
    assert labels.shape == (2, 23) and torch.bincount(labels[0]).tolist() == [5, 5, 5, 4, 4]
    assert not torch.equal(labels[0], labels[1])


def test_assignment_recovers_clear_clusters_and_is_shared() -> None:
    model = SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=3, num_heads=2, lam=25.0)
    truth = torch.arange(60) % 3
    perm = torch.tensor([2, 0, 1])
    log_p = torch.log_softmax(5.0 * torch.nn.functional.one_hot(perm[truth], 3).double(), dim=1)
    noisy = torch.log_softmax(
        torch.randn(60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1
    )
    labels = model.assign(torch.stack([log_p, log_p]), torch.stack([noisy, noisy]))  # view b is uninformative
    assert labels.shape == (2, 60)
    assert normalized_mutual_info_score(truth, labels[0]) == pytest.approx(1.0)
    assert torch.bincount(labels[0]).tolist() == [20, 20, 20]


def test_train_on_images_cross_view() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (48, 1, 8, 8), dtype=torch.uint8)
    enc = SmallCNN(in_channels=1, width=4)
    model = SelfLabelling(enc, num_clusters=4, num_heads=2, lam=10.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hist = train_self_labelling(
        model,
        images,
        ImageViews(size=8, scale=(0.5, 1.0)),
        epochs=2,
        batch_size=16,
        optimizer=opt,
        generator=torch.Generator().manual_seed(1),
        log=lambda s: None,
    )
    assert model.labels.shape == (2, 48) and len(hist.losses) == 2 and len(hist.refreshes) == 2
    assert all(torch.isfinite(torch.tensor(hist.losses)))
    assert int(torch.bincount(model.labels[0], minlength=4).min()) > 0


def test_two_tied_encoders_audio_and_images() -> None:
    torch.manual_seed(0)
    waves = torch.randn(24, 1, 1600)
    images = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8)
    enc_a, enc_b = AudioCNN(width=4), SmallCNN(in_channels=1, width=4)
    model = SelfLabelling(enc_a, enc_b, num_clusters=3, num_heads=1, marginal_std=0.2)
    assert model.heads_a is not model.heads_b
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in (*enc_a.parameters(), *enc_b.parameters())]
    train_self_labelling(
        model,
        waves,
        AudioViews(),
        data_b=images,
        views_b=ImageViews(size=8),
        epochs=1,
        batch_size=8,
        optimizer=opt,
        generator=torch.Generator().manual_seed(0),
        log=lambda s: None,
    )
    after = list((*enc_a.parameters(), *enc_b.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before[: len(list(enc_a.parameters()))], after))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before[len(list(enc_a.parameters())) :], after[len(list(enc_a.parameters())) :])
    )
    with pytest.raises(ConfigError, match="as many items"):
        train_self_labelling(
            model, waves, AudioViews(), data_b=images[:5], views_b=ImageViews(size=8), optimizer=opt
        )


def test_sela_command_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "sela",
            "--data",
            "digits",
            "--limit",
            "80",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--heads",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(m["heads_test"]) == 2 and 0 <= m["heads_test_mean"]["nmi"] <= 1
    assert {"knn_top1", "linear_top1", "kmeans"} <= set(m["learned"]) and "raw pixels" in m["references"]
    assert "NMI" in capsys.readouterr().out
    assert main(["sela", "--data", "digits", "--clusters", "1"]) == 2


def test_sela_command_on_an_fsdd_zip(fsdd: Path, tmp_path: Path) -> None:
    """On the session's fsdd (tests/conftest.py): 3 digits, 24 training clips."""
    args = ["sela", "--data", str(fsdd), "--epochs", "1", "--batch-size", "8", "--heads", "1", "--width", "4"]
    assert main([*args, "--no-linear-probe", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["config"]["clusters"] == 3  # K = the digits present, not a fixed 10
    mfcc = m["references"]["MFCC mean+std"]
    assert 0 <= mfcc["knn_top1"] <= 1 and 0 <= mfcc["kmeans"]["nmi"] <= 1


def test_sela_precision_bf16_and_bad_precision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "sela",
        "--data",
        "digits",
        "--limit",
        "80",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--heads",
        "1",
    ]
    assert main([*args, "--device", "cpu", "--precision", "bf16", "--out", str(tmp_path / "run")]) == 0
    assert "precision=bf16" in capsys.readouterr().out
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["config"]["precision"] == "bf16" and all(torch.isfinite(torch.tensor(m["history"]["losses"])))
    assert main([*args, "--precision", "fp16"]) == 2
    assert "precision must be one of auto, fp32, bf16" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sela_command_on_cuda(tmp_path: Path) -> None:
    """The GPU path: images on the device, bf16 autocast, channels_last, kNN and probe on the device."""
    args = [
        "sela",
        "--data",
        "digits",
        "--limit",
        "200",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--heads",
        "2",
    ]
    assert main([*args, "--device", "cuda", "--out", str(tmp_path / "run")]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["device"].startswith("cuda") and m["config"]["precision"] == "auto"
    assert 0 <= m["heads_test_mean"]["nmi"] <= 1 and 0 < m["learned"]["linear_top1"] <= 1


@pytest.mark.parametrize("lam", [0.0, -1.0, float("inf"), float("nan"), True])
def test_self_labelling_refuses_a_bad_lambda(lam: float) -> None:
    """λ = inf made Sinkhorn's annealing build stages until memory ran out; bools are not numbers here."""
    with pytest.raises(ConfigError, match="lam must be a positive finite number"):
        SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=3, lam=lam)


def test_self_labelling_refuses_more_clusters_than_items_and_a_misfit_marginal_early() -> None:
    """The CLI refused --clusters > items; the Python class trained on (empty clusters), and a marginal of the
    wrong length failed only at the first refresh."""
    model = SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=5)
    with pytest.raises(ConfigError, match=r"4 items cannot fill 5 clusters .*num_clusters <= 4"):
        model.init_labels(4)
    with pytest.raises(ConfigError, match=r"4 items cannot fill 5 clusters"):
        train_self_labelling(
            model, torch.randn(4, 4), lambda x, g: x, epochs=1, batch_size=2,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"must be an integer, got 4\.0"):
        model.init_labels(4.0)  # type: ignore[arg-type]
    model.init_labels(5)
    assert sorted(model.labels[0].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"\(num_clusters,\) = \(5,\) vector .*got shape \(4,\)"):
        SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=5, cluster_marginal=torch.ones(4))
    row = SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=5, cluster_marginal=torch.ones(1, 5))
    assert row.cluster_marginal.shape == (1, 5)  # (1, K) and (K, 1) are K masses, as sinkhorn takes them
    with pytest.raises(ConfigError, match=r"vector .*got shape \(5, 5\)"):
        SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=25, cluster_marginal=torch.ones(5, 5))
    with pytest.raises(ConfigError, match=r"cluster_marginal must be positive and finite .*got min 0"):
        SelfLabelling(
            MLP(4, hidden=(), batchnorm=False), num_clusters=3, cluster_marginal=torch.tensor([1.0, 0.0, 1.0])
        )


def test_marginal_order_reference_gives_the_largest_cluster_the_smallest_mass() -> None:
    from contrastkit.clustering.sinkhorn import sorted_marginal

    torch.manual_seed(0)
    kw = dict(num_clusters=5, num_heads=1, marginal_std=0.3)
    matched = SelfLabelling(MLP(4, hidden=(), batchnorm=False), **kw)
    reference = SelfLabelling(MLP(4, hidden=(), batchnorm=False), marginal_order="reference", **kw)
    log_p = torch.log_softmax(torch.randn(50, 5, generator=torch.Generator().manual_seed(1)), 1)
    sizes = log_p.exp().sum(0)
    g = torch.Generator().manual_seed(2)
    m = matched.prior(log_p, generator=g)
    reference._prior = matched._prior.clone()  # the same drawn sizes
    r = reference.prior(log_p)
    assert int(m.argmax()) == int(sizes.argmax()) and int(r.argmin()) == int(sizes.argmax())
    expected = 1.0 / sorted_marginal(matched._prior, sizes)
    assert torch.allclose(r, expected / expected.sum(), atol=1e-12)
    assert abs(float(r.sum()) - 1) < 1e-12
    with pytest.raises(ConfigError, match="marginal_order must be 'matched' or 'reference'"):
        SelfLabelling(MLP(4, hidden=(), batchnorm=False), marginal_order="largest", **kw)


def test_sela_marginal_order_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from contrastkit.cli import main

    base = [
        "sela",
        "--data",
        "digits",
        "--limit",
        "40",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--heads",
        "1",
    ]
    base += ["--no-linear-probe", "--device", "cpu"]
    assert main([*base, "--marginal-order", "reference", "--out", str(tmp_path / "a")]) == 2
    assert "--marginal-std 0 (equipartition) does not use" in capsys.readouterr().err
    assert (
        main([*base, "--marginal-std", "0.3", "--marginal-order", "big", "--out", str(tmp_path / "b")]) == 2
    )
    assert "marginal_order" in capsys.readouterr().err
    run = tmp_path / "c"
    assert main([*base, "--marginal-std", "0.3", "--marginal-order", "reference", "--out", str(run)]) == 0
    assert "gaussian sd 0.3 (reference)" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["config"]["marginal_order"] == "reference"


def test_forward_refuses_float_or_shaped_indices_naming_them() -> None:
    model = SelfLabelling(MLP(4, hidden=(), batchnorm=False), num_clusters=3, num_heads=2)
    model.init_labels(10)
    x = torch.randn(4, 4)
    assert torch.isfinite(model(x, None, torch.arange(4)))
    with pytest.raises(ConfigError, match=r"index must be the batch's integer dataset indices, shape \(B,\), "
                       r"got \(4,\) torch.float32; pass index.long\(\)"):  # fmt: skip
        model(x, None, torch.arange(4).float())  # was torch's "tensors used as indices must be long ..."
    with pytest.raises(ConfigError, match=r"got \(4, 1\) torch.int64"):
        model(x, None, torch.arange(4)[:, None])
    loss = model(x, None, torch.arange(4))
    for dtype in (torch.uint8, torch.int32):  # uint8 was read as a boolean mask (an IndexError)
        assert torch.equal(model(x, None, torch.arange(4, dtype=dtype)), loss)
