"""Labels reaching a negative source are one integer class index per embedding of the batch: a single
label used to broadcast over every anchor in the oracle and supervised masks (no error), and a wrong
length gave PyTorch's broadcasting errors or blamed neg_mask. Candidates check their label shapes too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError, ContrastkitError, ShapeError
from contrastkit.negatives import (
    Candidates,
    HardNegativeMixing,
    InBatchNegatives,
    MinedNegatives,
    QueueNegatives,
    oracle_mask,
)
from contrastkit.objectives import ShapeError as ObjectivesShapeError


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(0)), dim=-1)


def sources() -> dict[str, torch.nn.Module]:
    queue = QueueNegatives(8)
    queue.update(unit(4, 3), unit(4, 3), torch.tensor([0, 1, 2, 3]))
    mined = MinedNegatives(lambda: unit(10, 3), num_negatives=3, refresh_every=100, index="torch")
    return {
        "InBatchNegatives": InBatchNegatives(),
        "QueueNegatives": queue,
        "MinedNegatives": mined,
        "HardNegativeMixing": HardNegativeMixing(QueueNegatives(8), num_hardest=2, num_mixed=1),
    }


@pytest.mark.parametrize("name", list(sources()))
@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (
            torch.tensor([0]),
            r"labels must have shape \(4,\), one per embedding of the batch of 4, got \(1,\)$",
        ),
        (torch.tensor(0), r"got \(\)$"),
        (torch.tensor([0, 1, 2]), r"got \(3,\)$"),
        (torch.tensor([[0], [1], [0], [1]]), r"got \(4, 1\); flatten them"),
    ],
)
def test_labels_of_another_shape_are_refused_naming_both(name: str, labels: torch.Tensor, match: str) -> None:
    source = sources()[name]
    kwargs = {"indices": torch.arange(4)} if name == "MinedNegatives" else {}
    with pytest.raises(ShapeError, match=match) as info:
        source(unit(4, 3), unit(4, 3), labels, **kwargs)
    owner = "QueueNegatives" if name == "HardNegativeMixing" else name  # MoCHi's wrapped source checks
    assert str(info.value).startswith(f"{owner}: labels must have shape (4,)")


def test_float_labels_are_refused_and_good_ones_pass() -> None:
    with pytest.raises(ConfigError, match=r"labels must be integer class indices .*got dtype torch.float32"):
        InBatchNegatives()(unit(2, 3), unit(2, 3), torch.tensor([0.0, 1.0]))
    cand = InBatchNegatives()(unit(2, 3), unit(2, 3), torch.tensor([5, 5]))
    assert oracle_mask(cand).sum().item() == 4 * 4  # all four views share the label 5


def test_candidates_check_their_label_shapes_for_any_source() -> None:
    z = unit(4, 3)
    with pytest.raises(ShapeError, match=r"anchor_labels must have shape \(4,\), one per anchor, got \(1,\)"):
        Candidates(z, z, unit(6, 3), anchor_labels=torch.tensor([0]))
    with pytest.raises(ShapeError, match=r"negative_labels must have shape \(6,\) or \(4, 6\), .*got \(5,\)"):
        Candidates(z, z, unit(6, 3), anchor_labels=torch.arange(4), negative_labels=torch.arange(5))
    Candidates(z, z, unit(6, 3), anchor_labels=torch.arange(4), negative_labels=torch.zeros(4, 6).long())


def test_argument_errors_are_contrastkit_errors_and_value_errors() -> None:
    """``except ContrastkitError`` catches the library's argument errors; ``except ValueError`` still does."""
    assert ObjectivesShapeError is ShapeError
    for call in (
        lambda: QueueNegatives(0),
        lambda: HardNegativeMixing(InBatchNegatives(), num_hardest=0),
        lambda: InBatchNegatives()(unit(2, 3), unit(3, 3)),
    ):
        with pytest.raises(ContrastkitError) as info:
            call()
        assert isinstance(info.value, ValueError)
