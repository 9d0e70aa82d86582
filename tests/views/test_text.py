"""Text views on padded token ids: shapes, determinism, never empty, and each operation's definition."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.views.text import TextViews, compact, content_mask, local_shuffle, trim_padding

PAD, CLS, SEP = 0, 101, 102


def batch(lengths: list[int], width: int | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """``[CLS] content [SEP] [PAD]...`` rows whose content ids are unique across the batch (1000 + k)."""
    width = width or max(lengths) + 2
    out = torch.full((len(lengths), width), PAD, dtype=dtype)
    nxt = 1000
    for i, n in enumerate(lengths):
        out[i, 0] = CLS
        out[i, 1 : n + 1] = torch.arange(nxt, nxt + n)
        out[i, n + 1] = SEP
        nxt += n
    return out


def content(row: torch.Tensor) -> list[int]:
    return [t for t in row.tolist() if t not in (PAD, CLS, SEP)]


def check_layout(row: torch.Tensor) -> None:
    """[CLS] first, [SEP] right after the content, padding only at the right."""
    vals = row.tolist()
    n = sum(v != PAD for v in vals)
    assert vals[0] == CLS and vals[n - 1] == SEP and all(v == PAD for v in vals[n:])
    assert all(v not in (PAD, CLS, SEP) for v in vals[1 : n - 1])


def views(**kw: float) -> TextViews:
    return TextViews(pad_id=PAD, special_ids=(CLS, SEP), **kw)


ALL_OPS = dict(crop_p=0.5, delete_p=0.5, delete_rate=0.3, shuffle_p=0.5, shuffle_window=2)
LENGTHS = [1, 2, 3, 5, 8, 13, 0, 21] * 8


def test_identity_views_return_the_input_for_simcse() -> None:
    v = views()
    ids = batch([3, 5])
    assert v.is_identity
    assert v(ids) is ids


@pytest.mark.parametrize("dtype", [torch.long, torch.int32])
@pytest.mark.parametrize(
    "kw", [dict(crop_p=1.0), dict(delete_p=1.0, delete_rate=0.5), dict(shuffle_p=1.0), ALL_OPS]
)
def test_views_keep_shape_dtype_layout_and_never_empty(dtype: torch.dtype, kw: dict) -> None:
    ids = batch(LENGTHS, width=26, dtype=dtype)
    out = views(**kw)(ids, torch.Generator().manual_seed(0))
    assert out.shape == ids.shape and out.dtype == dtype and out.device == ids.device
    for before, after in zip(ids, out):
        check_layout(after)
        assert (len(content(after)) >= 1) == (len(content(before)) >= 1)
        assert set(content(after)) <= set(content(before))


def test_views_are_deterministic_under_a_seed() -> None:
    ids = batch(LENGTHS)
    v = views(**ALL_OPS)
    a = v(ids, torch.Generator().manual_seed(7))
    b = v(ids, torch.Generator().manual_seed(7))
    c = v(ids, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_deletion_keeps_an_ordered_subsequence_at_the_asked_rate() -> None:
    ids = batch([30] * 400)
    out = views(delete_p=1.0, delete_rate=0.3)(ids, torch.Generator().manual_seed(1))
    kept = 0
    for before, after in zip(ids, out):
        a, b = content(after), content(before)
        assert a == [t for t in b if t in set(a)]  # order preserved
        kept += len(a)
    # 12,000 Bernoulli(0.7) draws: the kept share is within 5 standard deviations of 0.7
    assert abs(kept / 12000 - 0.7) < 5 * math.sqrt(0.21 / 12000)


def test_deletion_at_a_huge_rate_still_leaves_one_token() -> None:
    ids = batch([1, 2, 4] * 50)
    out = views(delete_p=1.0, delete_rate=0.999)(ids, torch.Generator().manual_seed(2))
    assert all(len(content(row)) >= 1 for row in out)


def test_crop_keeps_one_contiguous_span_of_the_drawn_length() -> None:
    ids = batch([1, 4, 9, 20] * 50)
    out = views(crop_p=1.0, crop_min_ratio=0.3)(ids, torch.Generator().manual_seed(3))
    shorter = 0
    for before, after in zip(ids, out):
        a, b = content(after), content(before)
        assert math.ceil(0.3 * len(b)) <= len(a) <= len(b)
        start = b.index(a[0])
        assert b[start : start + len(a)] == a
        shorter += len(a) < len(b)
    assert shorter > 0


def test_local_shuffle_matches_lample_noise_and_moves_at_most_k() -> None:
    k = 2
    ids = batch([0, 1, 6, 11])
    noise = torch.rand(ids.shape, generator=torch.Generator().manual_seed(4))
    out = local_shuffle(ids, content_mask(ids, PAD, (CLS, SEP)), noise, k)
    for row, before, after, u in zip(range(4), ids, out, noise):
        positions = [j for j, t in enumerate(before.tolist()) if t not in (PAD, CLS, SEP)]
        keys = [i + float(u[p]) * (k + 1) for i, p in enumerate(positions)]  # q_i = i + U(0, k + 1)
        sigma = sorted(range(len(positions)), key=lambda i: keys[i])
        b = content(before)
        assert content(after) == [b[i] for i in sigma], row
        assert all(abs(new - old) <= k for new, old in enumerate(sigma))
        check_layout(after)


def test_probabilities_choose_which_rows_change() -> None:
    ids = batch([12] * 400)
    out = views(shuffle_p=0.25, shuffle_window=3)(ids, torch.Generator().manual_seed(5))
    changed = (out != ids).any(dim=1).float().mean().item()
    # a shuffled 12-token row stays unchanged with small probability; the share is near 0.25
    assert 0.15 < changed <= 0.35
    assert torch.equal(views(shuffle_p=0.0, crop_p=0.0, delete_p=1.0, delete_rate=0.0)(ids), ids)


def test_compact_and_trim_padding() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    keep = torch.tensor([[True, False, True, False], [False, True, False, False]])
    torch.testing.assert_close(compact(ids, keep, 0), torch.tensor([[5, 7, 0, 0], [9, 0, 0, 0]]))
    torch.testing.assert_close(trim_padding(compact(ids, keep, 0), 0), torch.tensor([[5, 7], [9, 0]]))
    assert trim_padding(torch.zeros(2, 3, dtype=torch.long), 0).shape == (2, 1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(crop_p=1.5), "crop_p must be a number in"),
        (dict(delete_rate=1.0), "delete_rate must be below 1"),
        (dict(crop_min_ratio=0.0), r"crop_min_ratio must be in \(0, 1\]"),
        (dict(shuffle_window=0), "shuffle_window must be an integer >= 1"),
    ],
)
def test_bad_options_raise_config_error(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        views(**kw)


def test_float_input_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"token ids of shape \(B, L\)"):
        views(crop_p=1.0)(torch.rand(2, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_views_on_the_gpu_with_a_gpu_generator() -> None:
    ids = batch(LENGTHS).cuda()
    out = views(**ALL_OPS)(ids, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == ids.device and out.shape == ids.shape
    for row in out.cpu():
        check_layout(row)


def test_rows_without_tokens_come_back_unchanged() -> None:
    """A (B, 0) batch raised an IndexError from argmax."""
    ids = torch.zeros(2, 0, dtype=torch.long)
    out = TextViews(pad_id=0, delete_p=1.0, crop_p=1.0, shuffle_p=1.0)(ids, torch.Generator().manual_seed(0))
    assert out.shape == (2, 0) and out.dtype == torch.long
