"""Text views: positives built from padded batches of token ids ``(B, L)``, vectorised, on their device.

A text view is a ``LongTensor`` of token ids, right-padded with ``pad_id`` (the encoder derives the
attention mask from it). Special tokens (``[CLS]``, ``[SEP]``) listed in ``special_ids`` never move and
are never removed; the operations act on the other, *content* tokens only.

* **Dropout (unsupervised SimCSE)**, Gao, Yao, Chen 2021, "SimCSE: Simple Contrastive Learning of
  Sentence Embeddings" (EMNLP 2021, arXiv 2104.08821; Sec. 3, Eq. (4), and Table 1 below, checked against
  the paper's text on 2026-12-02): the positive is the *same* sentence passed twice through the
  encoder, ``h_i^{z_i}`` and ``h_i^{z'_i}`` differing only by their independent dropout masks ``z, z'``.
  The view function is then the identity: :class:`TextViews` with every probability 0 (the default).
  The encoder must be in training mode with dropout > 0.
* **Span cropping** ("crop k%" of SimCSE Table 1; span cropping as in CLEAR, Wu et al. 2020, arXiv
  2012.15466, Sec. 3.2, not re-read): keep one contiguous span of ``ceil(r n)`` of the ``n`` content
  tokens, ``r ~ U(crop_min_ratio, 1)``, its start uniform over the valid starts.
* **Token deletion** ("word deletion" of SimCSE Table 1; CLEAR's word deletion): every content token is
  removed independently with probability ``delete_rate``. Tokens are the tokenizer's (WordPiece pieces
  for a subword vocabulary).
* **Word-order noise** (Lample, Conneau, Denoyer, Ranzato 2018, "Unsupervised Machine Translation Using
  Monolingual Corpora Only", ICLR 2018, arXiv 1711.00043, Sec. 2.3, not re-read): a random permutation
  ``σ`` with ``|σ(i) − i| ≤ k``, obtained by sorting the keys ``q_i = i + U(0, α)`` with ``α = k + 1``
  (``k = shuffle_window``).

Each operation is applied to a sample with its own probability (``crop_p``, ``delete_p``,
``shuffle_p``), in the order crop, delete, shuffle. Shapes and dtypes are kept (removed tokens leave
right padding), a row with content tokens always keeps at least one, and all randomness comes from one
``torch.Generator`` on the ids' device, so views are deterministic under a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError


def content_mask(ids: Tensor, pad_id: int, special_ids: Tensor | Sequence[int] = ()) -> Tensor:
    """Bool ``(B, L)``: True for tokens that are neither padding nor special."""
    mask = ids != pad_id
    special = torch.as_tensor(list(special_ids) if not isinstance(special_ids, Tensor) else special_ids)
    if special.numel():
        mask &= ~torch.isin(ids, special.to(ids.device, ids.dtype))
    return mask


def compact(ids: Tensor, keep: Tensor, pad_id: int) -> Tensor:
    """Move the kept tokens of each row to the front (order preserved) and pad the rest with ``pad_id``."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = ids.gather(1, order)
    return out.masked_fill(~keep.gather(1, order), pad_id)


def trim_padding(ids: Tensor, pad_id: int) -> Tensor:
    """Drop the trailing columns that are padding in every row (at least one column is kept)."""
    used = (ids != pad_id).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return ids[:, :length]


def _rank(content: Tensor) -> Tensor:
    """Position of each content token among its row's content tokens (0-based; junk elsewhere)."""
    return content.long().cumsum(dim=1) - 1


def crop_keep(content: Tensor, ratio: Tensor, start_u: Tensor) -> Tensor:
    """Bool ``(B, L)``: the content tokens inside a contiguous span of ``ceil(ratio · n)`` of the ``n``.

    ``ratio`` (B,) in (0, 1], ``start_u`` (B,) in [0, 1) picks the start uniformly among ``n − len + 1``.
    """
    n = content.sum(dim=1)
    length = torch.ceil(ratio * n).long().clamp(min=1)
    length = torch.minimum(length, n)
    start = torch.floor(start_u * (n - length + 1)).long()
    r = _rank(content)
    return content & (r >= start[:, None]) & (r < (start + length)[:, None])


def delete_keep(content: Tensor, u: Tensor, rate: float, fallback_u: Tensor) -> Tensor:
    """Bool ``(B, L)``: content tokens that survive deletion with probability ``rate`` (``u`` uniform).

    A row whose content would vanish keeps one content token, chosen by the largest ``fallback_u``.
    """
    keep = content & (u >= rate)
    empty = content.any(dim=1) & ~keep.any(dim=1)
    pick = fallback_u.masked_fill(~content, -1.0).argmax(dim=1)
    rescue = torch.zeros_like(keep)
    rescue[torch.arange(keep.shape[0], device=keep.device), pick] = True
    return keep | (rescue & empty[:, None])


def local_shuffle(ids: Tensor, content: Tensor, noise: Tensor, window: int) -> Tensor:
    """Permute the content tokens of each row by sorting ``rank + noise · (window + 1)`` (Lample 2018).

    ``noise`` (B, L) in [0, 1); a row whose noise is 0 is unchanged. Non-content tokens stay in place.
    """
    length = ids.shape[1]
    pos = torch.arange(length, device=ids.device, dtype=torch.float32).expand_as(noise)
    far = float(2 * length + window + 2)  # beyond every content key
    r = _rank(content).float()
    shuffled = torch.where(content, r + noise * (window + 1), far + pos)
    original = torch.where(content, r, far + pos)
    src = torch.argsort(shuffled, dim=1, stable=True)
    dest = torch.argsort(original, dim=1, stable=True)
    return ids.scatter(1, dest, ids.gather(1, src))


def _probability(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(f"text view option {name} must be a number in [0, 1], got {p!r}")
    return float(p)


class TextViews(nn.Module):
    """Composable text augmentation of padded token ids; all probabilities 0 is SimCSE's identity view.

    Args:
        pad_id: the padding id (kept at the right).
        special_ids: ids that never move or disappear (``[CLS]``, ``[SEP]``).
        crop_p: probability that a sample is cropped to a span; ``crop_min_ratio`` the smallest kept share.
        delete_p: probability that token deletion is applied to a sample; ``delete_rate`` the per-token
            deletion probability.
        shuffle_p: probability of word-order noise; ``shuffle_window`` the largest displacement ``k``.
    """

    special: Tensor

    def __init__(
        self,
        *,
        pad_id: int = 0,
        special_ids: Sequence[int] = (),
        crop_p: float = 0.0,
        crop_min_ratio: float = 0.7,
        delete_p: float = 0.0,
        delete_rate: float = 0.1,
        shuffle_p: float = 0.0,
        shuffle_window: int = 3,
    ) -> None:
        super().__init__()
        self.pad_id = int(pad_id)
        self.crop_p = _probability("crop_p", crop_p)
        self.delete_p = _probability("delete_p", delete_p)
        self.shuffle_p = _probability("shuffle_p", shuffle_p)
        self.delete_rate = _probability("delete_rate", delete_rate)
        if self.delete_rate >= 1:
            raise ConfigError("text view option delete_rate must be below 1 (1 would delete every token)")
        if isinstance(crop_min_ratio, bool) or not isinstance(crop_min_ratio, (int, float)):
            raise ConfigError(f"text view option crop_min_ratio must be a number, got {crop_min_ratio!r}")
        if not 0 < crop_min_ratio <= 1:
            raise ConfigError(f"text view option crop_min_ratio must be in (0, 1], got {crop_min_ratio!r}")
        self.crop_min_ratio = float(crop_min_ratio)
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 1:
            raise ConfigError(
                f"text view option shuffle_window must be an integer >= 1, got {shuffle_window!r}"
            )
        self.shuffle_window = shuffle_window
        self.register_buffer(
            "special", torch.tensor(sorted(set(special_ids)), dtype=torch.long), persistent=False
        )

    @property
    def is_identity(self) -> bool:
        """True when no operation can fire: the views differ only through the encoder's dropout."""
        return self.crop_p == 0 and self.delete_p == 0 and self.shuffle_p == 0

    def forward(self, ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Token ids ``(B, L)`` -> augmented ids of the same shape, dtype and device."""
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ConfigError(
                f"text views take token ids of shape (B, L) and dtype int64/int32; got shape "
                f"{tuple(ids.shape)} and dtype {ids.dtype}"
            )
        if self.is_identity:
            return ids
        dev = ids.device
        if generator is not None and generator.device.type != dev.type:
            raise ConfigError(
                f"the generator is on {generator.device} but the token ids are on {dev}; "
                f"create it with torch.Generator(device={str(dev)!r})"
            )
        b, length = ids.shape
        if length == 0:  # rows without tokens: nothing to augment (and no draws)
            return ids
        # A fixed set of draws per call, whatever fires, keeps the stream (and the views) reproducible.
        u = torch.rand(b, 5, generator=generator, device=dev)
        tok = torch.rand(3, b, length, generator=generator, device=dev)
        content = content_mask(ids, self.pad_id, self.special)
        out = ids
        if self.crop_p > 0:
            ratio = self.crop_min_ratio + (1 - self.crop_min_ratio) * u[:, 1]
            kept = crop_keep(content, ratio, u[:, 2])
            out = self._drop(out, content, kept, u[:, 0] < self.crop_p)
            content = content_mask(out, self.pad_id, self.special)
        if self.delete_p > 0:
            kept = delete_keep(content, tok[0], self.delete_rate, tok[1])
            out = self._drop(out, content, kept, u[:, 3] < self.delete_p)
            content = content_mask(out, self.pad_id, self.special)
        if self.shuffle_p > 0:
            noise = tok[2] * (u[:, 4] < self.shuffle_p).to(tok.dtype)[:, None]
            out = local_shuffle(out, content, noise, self.shuffle_window)
        return out

    def _drop(self, ids: Tensor, content: Tensor, kept_content: Tensor, apply: Tensor) -> Tensor:
        """Remove the content tokens not in ``kept_content`` from the rows where ``apply`` is True."""
        keep = (ids != self.pad_id) & ~content | kept_content
        keep = torch.where(apply[:, None], keep, torch.ones_like(keep))
        return compact(ids, keep, self.pad_id)

    def extra_repr(self) -> str:
        return (
            f"pad_id={self.pad_id}, special_ids={self.special.tolist()}, crop_p={self.crop_p}, "
            f"crop_min_ratio={self.crop_min_ratio}, delete_p={self.delete_p}, delete_rate={self.delete_rate}, "
            f"shuffle_p={self.shuffle_p}, shuffle_window={self.shuffle_window}"
        )


__all__ = [
    "TextViews",
    "compact",
    "content_mask",
    "crop_keep",
    "delete_keep",
    "local_shuffle",
    "trim_padding",
]
