"""Text training through the shared spine: SimCSE steps, the run folder, the CLI and the config checks."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.encoders import ContrastiveModel
from contrastkit.encoders.text import TransformerTextEncoder, WordTokenizer
from contrastkit.errors import ConfigError
from contrastkit.negatives import InBatchNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import CosineSimilarity
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.training.text import TextTrainConfig, train_text
from contrastkit.views.text import TextViews

from .conftest import sentences

TINY = dict(
    encoder="scratch", dim=16, depth=2, heads=2, min_freq=1, batch_size=8, steps=4, max_length=12,
    eval_max_length=12, log_every=2, progress=False, device="cpu",
)  # fmt: skip


def test_simcse_identity_views_differ_by_dropout_and_the_loss_falls() -> None:
    texts = sentences(16)
    tok = WordTokenizer.build(texts, min_freq=1)
    torch.manual_seed(0)
    enc = TransformerTextEncoder(tok.vocab_size, dim=16, depth=2, heads=2, max_length=12, dropout=0.1)
    learner = ContrastiveLearner(
        ContrastiveModel(enc, torch.nn.Identity()), InBatchNegatives(), CosineSimilarity(), InfoNCE(0.05)
    )
    views = TextViews(pad_id=tok.pad_id)
    ids = tok.encode(texts, 12)
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        out = learner(views(ids), views(ids))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.pos_score.item() < 0.9999  # same input, different dropout masks
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_train_text_writes_metrics_and_is_reproducible(tmp_path: Path, text_data: dict[str, str]) -> None:
    cfg = TextTrainConfig(**TINY, **text_data, out=str(tmp_path / "run1"))
    result = train_text(cfg)
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert (tmp_path / "run1" / "config.yaml").is_file()
    for key in ("sts_spearman_before", "sts_spearman_after", "sts_spearman_tfidf", "final_loss"):
        assert math.isfinite(metrics[key]), key
    assert metrics["before_is"] == "random initialisation" and metrics["steps"] == 4
    assert [row["step"] for row in metrics["loss_curve"]] == [2, 4]
    assert metrics["train_sentences"] == 48 and metrics["sts_pairs"] == 12
    again = train_text(cfg.__class__(**{**cfg.to_dict(), "out": str(tmp_path / "run2")}))
    assert again.metrics["sts_spearman_after"] == result.metrics["sts_spearman_after"]
    assert again.metrics["final_loss"] == result.metrics["final_loss"]


def test_queue_negatives_views_head_and_checkpoint(tmp_path: Path, text_data: dict[str, str]) -> None:
    cfg = TextTrainConfig(
        **{**TINY, "steps": 3},
        **text_data,
        negatives="queue",
        queue_size=16,
        head="mlp",
        crop_p=0.5,
        delete_p=0.5,
        shuffle_p=0.5,
        save_model=True,
        limit=40,
        out=str(tmp_path / "run"),
    )
    result = train_text(cfg)
    assert result.metrics["train_sentences"] == 40
    assert math.isfinite(result.metrics["sts_spearman_after"])
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["tokenizer"]["kind"] == "words" and "backbone.tokens.weight" in saved["model"]


def test_the_queue_gets_each_batchs_sentence_indices(
    tmp_path: Path, text_data: dict[str, str], learner_indices: list
) -> None:
    """The indices are stored beside the keys, so a queue larger than an epoch masks each sentence's own keys."""
    seen = learner_indices
    cfg = TextTrainConfig(
        **{**TINY, "steps": 5},
        **text_data,
        negatives="queue",
        queue_size=64,
        limit=16,
        out=str(tmp_path / "r"),
    )
    train_text(cfg)
    assert len(seen) == 5 and all(t is not None and t.shape == (8,) for t in seen)
    for epoch in (seen[0:2], seen[2:4]):  # two batches of 8 make an epoch of the 16 sentences
        assert sorted(torch.cat(epoch).tolist()) == list(range(16))


def test_cli_text_train_and_its_one_line_errors(
    tmp_path: Path, text_data: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--encoder", "scratch", "--dim", "16", "--depth", "2", "--heads", "2", "--min-freq", "1"]
    flags += [
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--max-length",
        "12",
        "--eval-max-length",
        "12",
        "--no-progress",
    ]
    flags += ["--device", "cpu", "--sentences", text_data["sentences"], "--sts", text_data["sts"]]
    assert main(["text-train", *flags, "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
    lines = capsys.readouterr().out.splitlines()
    head = max(i for i, line in enumerate(lines) if line.startswith("STS-B test Spearman x100"))
    table = lines[head + 1 : head + 4]  # before / after / TF-IDF, the figures in one column
    assert [line.split("  ")[1].rstrip() for line in table][2] == "TF-IDF bag of words"
    assert len({len(line) for line in table}) == 1 and len({line.rindex(" ") for line in table}) == 1
    assert (
        main(["text-train", *flags, "--sentences", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r2")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.txt" in err and "does not exist" in err
    assert main(["text-train", *flags, "--batch-size", "100", "--out", str(tmp_path / "r3")]) == 2
    assert "larger than the 48 training sentences" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path: Path) -> None:
    from contrastkit.cli import build_parser
    from contrastkit.training.text import config_from_args

    path = tmp_path / "text.toml"
    path.write_text('encoder = "scratch"\nbatch-size = 32\ntemperature = 0.1\n', encoding="utf-8")
    args = build_parser().parse_args(["text-train", "--config", str(path), "--batch-size", "16"])
    cfg = config_from_args(args)
    assert (cfg.encoder, cfg.batch_size, cfg.temperature) == ("scratch", 16, 0.1)
    path.write_text("batch-size = 'many'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="option batch_size has the wrong type"):
        config_from_args(build_parser().parse_args(["text-train", "--config", str(path)]))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(objective="supcon"), "objective .* must be one of: infonce"),
        (dict(negatives="gather"), "negatives .* must be one of: cross-view, in-batch, queue"),
        (dict(batch_size=1), "batch_size .* an integer >= 2"),
        (dict(dim=30, heads=4), "dim .* divisible by heads"),
        (dict(delete_rate=1.0), r"delete_rate .* in \[0, 1\)"),
        (dict(encoder="bert"), "encoder .* one of: pretrained, scratch"),
        (dict(checkpoint_every=-1), "checkpoint_every .* an integer >= 0"),
        (dict(checkpoint_every=2.5), "checkpoint_every .* an integer >= 0"),
        (dict(limit=True), "limit .* a positive integer"),
        (dict(steps=True), "steps .* a positive integer"),
        (dict(batch_size=True), "batch_size .* an integer >= 2"),
        # below [CLS] + [SEP] the HF tokenizer did not truncate (1) or gave every sentence [CLS][SEP] (2)
        (dict(max_length=2), r"max_length \(--max-length\) must be at least 3 with WordPiece"),
        (dict(encoder="scratch", tokenizer="wordpiece", eval_max_length=1), "eval_max_length .* at least 3"),
        # beyond MiniLM's 512 positions: a transformers traceback after the first evaluation
        (dict(max_length=1000), r"at most 512 for the pretrained encoder \(all-MiniLM-L6-v2 has 512"),
    ],
)
def test_bad_config_values_name_the_option(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TextTrainConfig(**kw)


def test_a_words_tokenizer_may_keep_one_token_and_minilm_has_the_positions_we_check() -> None:
    from contrastkit.training.text import MINILM_POSITIONS

    assert TextTrainConfig(encoder="scratch", max_length=1).max_length == 1  # no special tokens there
    try:
        from contrastkit.encoders.text import minilm_path

        folder = minilm_path()
    except Exception:  # the text extra is not installed
        pytest.skip("needs the text extra: pip install 'contrastkit[text]'")
    assert (
        json.loads((Path(folder) / "config.json").read_text())["max_position_embeddings"] == MINILM_POSITIONS
    )


def test_options_a_text_run_does_not_use_are_named() -> None:
    """--dim with the pretrained MiniLM, --tau-plus with infonce, --epochs beside --steps, ... were accepted
    silently and recorded in config.yaml as if used."""
    from contrastkit.training.text import text_unused_options

    assert text_unused_options(TextTrainConfig()) == []
    found = text_unused_options(TextTrainConfig(dim=64, queue_size=8, tau_plus=0.3, steps=2, epochs=5))
    assert found == [
        "--tau-plus 0.3 has no effect in this run: --objective infonce does not use it (it takes --temperature)",
        "--queue-size 8 has no effect in this run: it is used only by --negatives queue",
        "--dim 64 has no effect in this run: it is used only by --encoder scratch (the pretrained MiniLM has "
        "its own tokenizer, size and dropout)",
        "--epochs 5 has no effect in this run: it is used only by runs without --steps",
    ]
    used = TextTrainConfig(encoder="scratch", dim=64, heads=4, negatives="queue", queue_size=128, crop_p=0.5,
                           crop_min_ratio=0.5, objective="triplet", margin=0.2)  # fmt: skip
    assert text_unused_options(used) == []
    # a queue below one step's 2 x 64 keys (the key encoder's symmetrised step) is accepted, and named
    small = text_unused_options(dataclasses.replace(used, queue_size=100))
    assert small == [
        "--queue-size 100 is smaller than the 128 keys one step enqueues: the queue holds only the newest 100 "
        "keys of the previous step and none older (no more negatives than one batch gives); raise --queue-size "
        "to a multiple of 128 (MoCo's: 65536)"
    ]
    assert text_unused_options(dataclasses.replace(used, queue_size=100, key_momentum=0.0)) == []
