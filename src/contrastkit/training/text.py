"""Contrastive training of sentence encoders on unlabeled sentences, evaluated on STS Benchmark.

The same spine as images: text views (:class:`~contrastkit.views.text.TextViews`, padded token ids) ->
encoder (+ optional head) -> negatives (in-batch or a queue) -> cosine score -> objective, assembled by
:class:`~contrastkit.training.learner.ContrastiveLearner`. With the default identity views and the default
``cross-view`` negatives this is unsupervised SimCSE (Gao et al. 2021, Sec. 3, Eq. 4): each sentence is
encoded twice in one batch, the encoder's dropout makes the two views differ, and each first view is
contrasted with the batch's second views (its own the positive, B - 1 negatives); temperature 0.05, max
length 32, batch 64, lr 3e-5 for a pretrained encoder are SimCSE's (Sec. 3 and Appendix A). ``--negatives
in-batch`` is SimCLR's symmetric NT-Xent instead (both views anchors, 2B - 2 negatives).

:func:`train_text` writes ``metrics.json`` (STS Spearman ×100 before and after training, the TF-IDF
bag-of-words reference, the loss curve, timings) and ``config.yaml`` into the run folder (an unfinished,
resumable ``metrics.json`` at every periodic checkpoint and at the last step's, replaced at the end). For the
from-scratch encoder "before" is the same encoder at random initialisation.

Runs are resumable: every ``--checkpoint-every`` steps, after the last step (before the final evaluation;
a stop signal during it stops at once, and the resume only evaluates) and on a first Ctrl-C / SIGTERM,
``checkpoint.pt`` holds everything the loop needs to continue exactly (model, key encoder, queue, optimizer, schedule, the
random generators, the epoch's order, the loss curve, the clock, the tokenizer and the before-training
scores); ``contrastkit text-train --resume RUN`` (:func:`train_text` with ``resume``) picks the run up
and ends bit for bit like the uninterrupted run (on CPU). Without ``--save-model`` that checkpoint is
removed when the run finishes; with it, it is replaced by the finished checkpoint (model and tokenizer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from argparse import ArgumentParser, BooleanOptionalAction, Namespace
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from contrastkit.data.text import load_sentences, load_sts_split, shared_data_dir
from contrastkit.encoders import ContrastiveModel
from contrastkit.encoders.text import (
    TransformerTextEncoder,
    WordPieceTokenizer,
    WordTokenizer,
    load_minilm,
)
from contrastkit.errors import ConfigError, ContrastkitError, DivergedError
from contrastkit.evaluation.sts import embed_sentences, embeddings_spearman, tfidf_spearman
from contrastkit.negatives import MomentumEncoder, build_negatives
from contrastkit.objectives import OBJECTIVES, build_objective
from contrastkit.scores import CosineSimilarity
from contrastkit.training.checkpoint import (
    CHECKPOINT_NAME,
    FOREIGN_RUNS,
    ForeignRunError,
    nonfinite_state_tensors,
    read_run_metrics,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    write_atomic,
)
from contrastkit.training.config import (
    _check,
    _number,
    _opt,
    _positive,
    load_config_file,
    null_allowed,
    null_option_error,
)
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.training.optim import build_optimizer, warmup_cosine
from contrastkit.training.options import (
    check_seed,
    flag_help,
    given_flags,
    objective_unused,
    small_queue_warnings,
    unused_option_warnings,
    used_only_by,
)
from contrastkit.training.precision import autocast_dtype
from contrastkit.training.resume import (
    COMMAND_RESUMABLE_OPTIONS,
    StopSignals,
    TrainingInterrupted,
    check_resume_device,
    final_evaluation,
    interrupted_message,
    open_command_resume,
    refuse_cuda_run_without_cuda,
    refuse_diverged_features,
    refuse_misfit_checkpoint,
    resumed_config,
    unfinished_run_hint,
)
from contrastkit.training.run_folder import (
    new_folders,
    prepare_run_dir,
    remove_if_empty,
    unlock_run_dir,
    write_metrics,
)
from contrastkit.training.trainer import _progress, resolve_device, warn_edited_config
from contrastkit.views.text import TextViews, trim_padding

DEFAULT_LR = {"pretrained": 3e-5, "scratch": 5e-4}
TEXT_NEGATIVES = ("cross-view", "in-batch", "queue")
MINILM_POSITIONS = 512  # all-MiniLM-L6-v2's max_position_embeddings (its config.json)
COMMAND = "text-train"

# Options that may differ on resume: none changes what is computed. ``device`` within one device type
# (checked); ``sentences`` and ``sts`` only as another path to the same data (the data's fingerprint is
# compared); ``save_model`` only decides whether the model is kept at the end.
TEXT_RESUMABLE_OPTIONS = COMMAND_RESUMABLE_OPTIONS | {
    "checkpoint_every",
    "log_every",
    "progress",
    "save_model",
    "sentences",
    "sts",
}


@dataclass
class TextTrainConfig:
    """Everything that defines a text training run (``contrastkit text-train``)."""

    # data
    sentences: str | None = _opt(
        None, "training sentences, one a line, plain or .gz (default: <shared data>/text/sentences.txt.gz)"
    )
    sts: str | None = _opt(
        None, "folder of sts-{train,dev,test}.csv (default: <shared data>/text/stsbenchmark)"
    )
    eval_split: str = _opt("test", "STS-B split to report: train | dev | test")
    limit: int | None = _opt(None, "train on this many sentences (a seeded random subset; default: all)")
    skip_empty: bool = _opt(False, "drop empty lines of the sentence file instead of stopping")
    # model
    encoder: str = _opt("pretrained", "pretrained (all-MiniLM-L6-v2, needs contrastkit[text]) | scratch")
    tokenizer: str = _opt(
        "words", "tokenizer of the scratch encoder: words (built from the sentences) | wordpiece"
    )
    vocab_size: int = _opt(30000, "largest word vocabulary (words tokenizer)")
    min_freq: int = _opt(2, "words seen fewer times map to [UNK] (words tokenizer)")
    dim: int = _opt(256, "width of the scratch transformer")
    depth: int = _opt(4, "layers of the scratch transformer")
    heads: int = _opt(4, "attention heads of the scratch transformer")
    dropout: float = _opt(0.1, "dropout of the scratch transformer (SimCSE's noise)")
    head: str = _opt(
        "none", "projection head for the loss: none | mlp (SimCSE's Linear+Tanh, dropped at eval)"
    )
    # views
    crop_p: float = _opt(0.0, "probability of cropping a sentence to a span")
    crop_min_ratio: float = _opt(0.7, "smallest share of tokens a crop keeps")
    delete_p: float = _opt(0.0, "probability of applying token deletion to a sentence")
    delete_rate: float = _opt(0.1, "share of tokens token deletion removes")
    shuffle_p: float = _opt(0.0, "probability of word-order noise")
    shuffle_window: int = _opt(3, "largest displacement of word-order noise")
    # contrast
    objective: str = _opt("infonce", "infonce | debiased | hard-negative | decoupled | triplet | margin")
    temperature: float = _opt(0.05, "temperature of the objective (SimCSE: 0.05)")
    tau_plus: float = _opt(0.1, "class prior of the debiased and hard-negative objectives")
    beta: float = _opt(1.0, "hardness of the hard-negative objective")
    margin: float = _opt(
        0.5,
        "margin of the triplet objective (in score units: s(x,x-) - s(x,x+) + m) and of the margin "
        "objective (a distance on the unit sphere, sqrt(2 - 2s))",
    )
    negatives: str = _opt(
        "cross-view",
        "cross-view (SimCSE Eq. 4: each first view against the batch's second views, B - 1 negatives) | "
        "in-batch (SimCLR's NT-Xent: both views as anchors, 2B - 2 negatives) | queue (MoCo)",
    )
    queue_size: int = _opt(4096, "negatives in the queue")
    key_momentum: float | None = _opt(
        None, "EMA momentum of the key encoder; default 0.99 with a queue, off otherwise; 0 disables"
    )
    # optimisation
    batch_size: int = _opt(64, "sentences per batch (each gives two views)")
    steps: int | None = _opt(None, "training steps (default: the epochs over the sentences)")
    epochs: int = _opt(1, "passes over the sentences when --steps is not given")
    lr: float | None = _opt(None, "peak AdamW learning rate (default: pretrained 3e-5, scratch 5e-4)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    warmup: float | None = _opt(None, "share of steps of linear warm-up (default: pretrained 0, scratch 0.1)")
    max_length: int = _opt(32, "tokens per training sentence (longer ones are truncated)")
    # run
    eval_max_length: int = _opt(
        128,
        "tokens per sentence at evaluation, longer ones truncated (STS-B's longest is 46; the MiniLM "
        "package's sentence-transformers config uses 256)",
    )
    eval_batch_size: int = _opt(128, "sentences per evaluation batch")
    seed: int = _opt(0, "random seed (subset, init, order, views)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    log_every: int = _opt(50, "print the loss every this many steps")
    checkpoint_every: int = _opt(
        500, "write a resumable checkpoint.pt every this many steps (0: only on Ctrl-C / SIGTERM)"
    )
    save_model: bool = _opt(
        False,
        "keep checkpoint.pt at the end (the trained encoder and tokenizer); without it the resumable "
        "checkpoint written during training is removed when the run finishes",
    )
    progress: bool = _opt(True, "show a progress bar")
    out: str | None = _opt(None, "run folder (default runs/text-<encoder>-<time>)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value."""
        check_seed("seed", self.seed)
        for name in (
            "vocab_size",
            "min_freq",
            "dim",
            "depth",
            "heads",
            "shuffle_window",
            "queue_size",
            "epochs",
            "max_length",
            "eval_max_length",
            "eval_batch_size",
            "log_every",
        ):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "a positive integer")
        v = self.checkpoint_every
        _check(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0, "checkpoint_every", "an integer >= 0"
        )
        for name in ("limit", "steps"):
            v = getattr(self, name)
            _check(
                v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
                name,
                "a positive integer",
            )
        v = self.batch_size
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 2, "batch_size", "an integer >= 2")
        choices = {
            "eval_split": ("train", "dev", "test"),
            "encoder": ("pretrained", "scratch"),
            "tokenizer": ("words", "wordpiece"),
            "head": ("none", "mlp"),
            "negatives": TEXT_NEGATIVES,
            "precision": ("auto", "fp32", "bf16"),
        }
        for name, allowed in choices.items():
            _check(getattr(self, name) in allowed, name, "one of: " + ", ".join(allowed))
        text_objectives = [k for k, cls in OBJECTIVES.items() if not getattr(cls, "needs_labels", False)]
        _check(self.objective in text_objectives, "objective", "one of: " + ", ".join(text_objectives))
        for name in ("crop_p", "delete_p", "shuffle_p", "dropout"):
            v = getattr(self, name)
            _check(_number(v) and 0 <= v <= 1, name, "a number in [0, 1]")
        _check(_number(self.delete_rate) and 0 <= self.delete_rate < 1, "delete_rate", "a number in [0, 1)")
        _check(_number(self.crop_min_ratio) and 0 < self.crop_min_ratio <= 1, "crop_min_ratio", "in (0, 1]")
        for name in ("temperature", "margin"):
            _check(_positive(getattr(self, name)), name, "a positive number")
        _check(self.lr is None or _positive(self.lr), "lr", "a positive number")
        _check(_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        _check(self.warmup is None or (_number(self.warmup) and 0 <= self.warmup < 1), "warmup", "in [0, 1)")
        _check(_number(self.tau_plus) and 0 <= self.tau_plus < 1, "tau_plus", "a number in [0, 1)")
        _check(_number(self.beta) and self.beta >= 0, "beta", "a number >= 0")
        v = self.key_momentum
        _check(v is None or (_number(v) and 0 <= v <= 1), "key_momentum", "a number in [0, 1]")
        dev = self.device
        _check(
            dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
            "device",
            "one of: auto, cpu, cuda, cuda:N",
        )
        if self.dim % self.heads:
            raise ConfigError(f"option dim ({self.dim}) must be divisible by heads ({self.heads})")
        wordpiece = self.encoder == "pretrained" or self.tokenizer == "wordpiece"
        for name in ("max_length", "eval_max_length"):
            v = getattr(self, name)
            if wordpiece and v < 3:  # below [CLS] + [SEP] the Hugging Face tokenizer does not truncate at all
                raise ConfigError(
                    f"option {name} (--{name.replace('_', '-')}) must be at least 3 with WordPiece tokens "
                    f"([CLS], one token, [SEP]), got {v}"
                )
            if self.encoder == "pretrained" and v > MINILM_POSITIONS:
                raise ConfigError(
                    f"option {name} (--{name.replace('_', '-')}) must be at most {MINILM_POSITIONS} for the "
                    f"pretrained encoder (all-MiniLM-L6-v2 has {MINILM_POSITIONS} positions), got {v}"
                )

    def resolved(self) -> TextTrainConfig:
        """Fill the defaults that depend on the encoder (lr, warm-up) and the negatives (key momentum)."""
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.encoder]
        warmup = self.warmup if self.warmup is not None else (0.0 if self.encoder == "pretrained" else 0.1)
        km = (
            self.key_momentum
            if self.key_momentum is not None
            else (0.99 if self.negatives == "queue" else 0.0)
        )
        return dataclasses.replace(self, lr=lr, warmup=warmup, key_momentum=km)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], *, source: str = "config", nulls_from_run: AbstractSet[str] = frozenset()
    ) -> TextTrainConfig:
        """Build from a mapping (keys with ``-`` or ``_``); unknown keys and wrong types name themselves.
        ``nulls_from_run``: options whose null comes from a saved run (a resume's merge), taken as it is."""
        return cls(**cls.typed_values(values, source=source, allow_null=nulls_from_run))

    @classmethod
    def typed_values(
        cls, values: dict[str, Any], *, source: str = "config", allow_null: bool | AbstractSet[str] = False
    ) -> dict[str, Any]:
        """``values`` with ``_`` keys, floats as float; unknown keys and wrong types raise ConfigError, and
        so does a null for an option whose type does not allow None, unless ``allow_null`` is True (a saved
        run's) or names the option."""
        known = {f.name: str(f.type) for f in fields(cls)}
        defaults = {f.name: f.default for f in fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(norm) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
            )
        for name, v in norm.items():
            t = known[name]
            if v is None and not (null_allowed(allow_null, name) or "None" in t):
                raise null_option_error(source, name, t, defaults[name])
            ok = (
                v is None
                or (t.startswith("bool") and isinstance(v, bool))
                or (t.startswith("int") and isinstance(v, int) and not isinstance(v, bool))
                or (t.startswith("float") and _number(v))
                or (t.startswith("str") and isinstance(v, str))
            )
            if not ok:
                raise ConfigError(
                    f"{source}: option {name} has the wrong type ({type(v).__name__}); expected {t}"
                )
            if t.startswith("float") and v is not None:
                norm[name] = float(v)
        return norm


def add_arguments(parser: ArgumentParser) -> None:
    """The ``text-train`` flags, one per :class:`TextTrainConfig` field, plus ``--config FILE``."""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML or YAML file of options (keys as below); flags win"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped text-train run (its folder or checkpoint.pt) from its checkpoint, with its "
        "saved options, exactly; only --device (same device type), --progress, --log-every, "
        "--checkpoint-every and --save-model may be given again with other values, and --sentences / --sts "
        "as another path to the same data",
    )
    for f in fields(TextTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type)
        help_text = flag_help(f)
        if t.startswith("bool"):
            parser.add_argument(flag, action=BooleanOptionalAction, default=None, help=help_text)
            continue
        kind: Any = int if t.startswith("int") else float if t.startswith("float") else str
        metavar = (
            "PATH" if f.name in ("sentences", "sts", "out") else {int: "N", float: "X", str: "NAME"}[kind]
        )
        parser.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


@dataclass
class ResumeRequest:
    """``--resume RUN`` and the options given with it (None: compare the whole config with the run's)."""

    run: str
    given: dict[str, Any] | None = None


_RESUME_ATTR = "_resume_request"


def text_unused_options(config: TextTrainConfig) -> list[str]:
    """Warnings for options set away from their defaults that this text-train run does not use."""
    unused = objective_unused(config.objective, ("temperature", "tau_plus", "beta", "margin"))
    rules = [
        (("queue_size",), config.negatives != "queue", "--negatives queue"),
        (
            ("tokenizer", "vocab_size", "min_freq", "dim", "depth", "heads", "dropout"),
            config.encoder == "pretrained",
            "--encoder scratch (the pretrained MiniLM has its own tokenizer, size and dropout)",
        ),
        (("vocab_size", "min_freq"), config.tokenizer != "words", "--tokenizer words"),
        (("epochs",), config.steps is not None, "runs without --steps"),
        (("crop_min_ratio",), config.crop_p == 0, "span cropping (--crop-p above 0)"),
        (("delete_rate",), config.delete_p == 0, "token deletion (--delete-p above 0)"),
        (("shuffle_window",), config.shuffle_p == 0, "word-order noise (--shuffle-p above 0)"),
    ]
    km = (
        config.key_momentum
        if config.key_momentum is not None
        else (0.99 if config.negatives == "queue" else 0)
    )
    keys = config.batch_size * (2 if km > 0 else 1)  # the symmetrised step enqueues both views' keys
    return unused_option_warnings(config, used_only_by(rules, unused)) + small_queue_warnings(
        config.negatives, config.queue_size, keys
    )


def config_from_args(args: Namespace) -> TextTrainConfig:
    """Defaults < config file < flags.

    With ``--resume RUN`` the options come from the run's checkpoint: the config returned is the default
    one carrying a :class:`ResumeRequest` (the run and the options given explicitly, by the config file or
    flags), which :func:`train_text` continues; the options are only type-checked here.
    """
    values: dict[str, Any] = {}
    source = getattr(args, "config", None) or "command line"
    resume = getattr(args, "resume", None)
    if getattr(args, "config", None):
        values.update({k.replace("-", "_"): v for k, v in load_config_file(args.config).items()})
        TextTrainConfig.typed_values(values, source=args.config)
        if resume is not None:  # a resume continues in the run's folder: a config file's out (the run's
            values.pop("out", None)  # own config.yaml keeps it as first given) is not an --out
    values.update(given_flags(TextTrainConfig, args))
    if resume is None:
        return TextTrainConfig.from_dict(values, source=source)
    config = TextTrainConfig()
    setattr(
        config, _RESUME_ATTR, ResumeRequest(str(resume), TextTrainConfig.typed_values(values, source=source))
    )
    return config


class SimCSEHead(nn.Module):
    """SimCSE's training-only MLP over the sentence embedding: ``tanh(W h + b)`` (Gao et al. 2021, Sec. 3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.linear(h))


@dataclass
class TextTrainResult:
    """What :func:`train_text` returns."""

    run_dir: Path
    metrics: dict[str, Any]
    model: ContrastiveModel
    tokenizer: Any


def build_text_encoder(
    config: TextTrainConfig, sentences: list[str], *, tokenizer: Any = None
) -> tuple[nn.Module, Any]:
    """The encoder and tokenizer the config asks for (a words vocabulary is built from ``sentences``, unless
    ``tokenizer``, one restored from a checkpoint, is given)."""
    if config.encoder == "pretrained":
        return load_minilm()
    if tokenizer is None:
        if config.tokenizer == "wordpiece":
            tokenizer = WordPieceTokenizer()
        else:
            tokenizer = WordTokenizer.build(sentences, min_freq=config.min_freq, max_size=config.vocab_size)
    encoder = TransformerTextEncoder(
        tokenizer.vocab_size,
        dim=config.dim,
        depth=config.depth,
        heads=config.heads,
        max_length=max(config.max_length, config.eval_max_length),
        dropout=config.dropout,
        pad_id=tokenizer.pad_id,
    )
    return encoder, tokenizer


def _saved_tokenizer(state: dict[str, Any] | None) -> Any:
    """The words tokenizer a checkpoint holds (its vocabulary, so the same ids result); None otherwise (a
    WordPiece vocabulary is MiniLM's fixed one, loaded again from the package)."""
    saved = (state or {}).get("tokenizer")
    if isinstance(saved, dict) and saved.get("kind") == "words":
        return WordTokenizer(saved["words"])
    return None


def _paths(config: TextTrainConfig) -> tuple[Path, Path]:
    root = shared_data_dir() / "text"
    sentences = Path(config.sentences) if config.sentences else root / "sentences.txt.gz"
    sts = Path(config.sts) if config.sts else root / "stsbenchmark"
    return sentences, sts


def _absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``sentences`` and ``sts``, when given, as absolute paths (a resume from another
    folder finds them)."""
    return {**values, **{k: os.path.abspath(values[k]) for k in ("sentences", "sts") if values.get(k)}}


@dataclass
class _Latest:
    """The step of the resumable checkpoint the run folder holds (None: none) and the run's length."""

    step: int | None = None
    total: int | None = None


def train_text(
    config: TextTrainConfig, *, out: Any = None, resume: str | Path | None = None
) -> TextTrainResult:
    """Train a sentence encoder as ``config`` says; report STS Spearman ×100 before and after.

    A new run's folder is checked (and created) first: a file, a folder that holds a run or one that cannot
    be created is refused before any work. Every ``checkpoint_every`` steps ``checkpoint.pt`` is written
    (atomically) with everything needed to continue exactly, then ``metrics.json`` (unfinished, resumable,
    the loss curve so far, a note naming the resume: what a kill -9 leaves); so are both after the last
    step, before the final evaluation. A first SIGINT (Ctrl-C) or SIGTERM stops at
    the next step and writes that checkpoint, ``config.yaml`` and ``metrics.json`` (marked interrupted and
    resumable, with the loss curve so far); then
    :class:`~contrastkit.training.resume.TrainingInterrupted` is raised, whose message names the resume
    command. At the end the resumable checkpoint is replaced by the finished one with ``save_model``, or
    removed without it.

    ``resume`` (a run folder or its ``checkpoint.pt``; or the :class:`ResumeRequest` that
    :func:`config_from_args` attaches to the config for ``--resume``) continues that run in its folder, with
    its saved options: ``config`` must agree with them except in :data:`TEXT_RESUMABLE_OPTIONS` (from the
    command line only the options given explicitly are compared). On CPU the resumed run ends bit for bit
    like the uninterrupted one.
    """
    out = out or sys.stdout
    t_start = time.perf_counter()
    request: ResumeRequest | None = getattr(config, _RESUME_ATTR, None)
    if resume is not None:
        request = ResumeRequest(str(resume), request.given if request is not None else None)
    saved: dict[str, Any] | None = None
    created: list[Path] = []
    if request is not None:
        config, run_dir, saved = _open_resume(config, request)
        refuse_cuda_run_without_cuda(saved.get("device", "cpu"), run_dir)  # before --device auto resolves
        device = resolve_device(config.device)
        check_resume_device(saved, device, run_dir)
    else:
        config = config.resolved()
        device = resolve_device(config.device)
        run_dir = (
            Path(config.out)
            if config.out
            else Path("runs") / (f"text-{config.encoder}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        )
        created = new_folders(run_dir)
        prepare_run_dir(run_dir, hint=unfinished_run_hint(run_dir, kind="text", command=COMMAND))
        config = TextTrainConfig(**_absolute_paths({**config.to_dict(), "out": str(run_dir)}))
    latest = _Latest()
    try:
        return _train_text(config, run_dir, device, out, t_start, saved, latest)
    except TrainingInterrupted:
        raise  # a stop signal: the checkpoint and metrics it wrote are the resumable run
    except BaseException as exc:  # a crash, a second Ctrl-C / SIGTERM, a Ctrl-C during the start
        kept = _undo_failed_run(run_dir, created) if saved is None else []  # a resumed run keeps its folder
        note = None
        has_checkpoint = latest.step is not None and (run_dir / CHECKPOINT_NAME).is_file()
        if has_checkpoint and not isinstance(exc, ContrastkitError):  # it does not say what happened
            print(
                f"contrastkit: {run_dir / CHECKPOINT_NAME} keeps step {latest.step} of {latest.total}; "
                f"continue with: contrastkit {COMMAND} --resume {run_dir}",
                file=sys.stderr,
                flush=True,
            )
        if isinstance(exc, DivergedError):  # a resume would repeat it: no --resume advice anywhere
            _mark_diverged(run_dir, exc)
        elif has_checkpoint:
            note = (
                f"the run folder {str(run_dir)!r} keeps the resumable checkpoint of step {latest.step} of "
                f"{latest.total}: continue from it with: contrastkit {COMMAND} --resume {run_dir} (or remove "
                "the folder to start again)"
            )
        elif kept:
            note = (
                f"the run folder {str(run_dir)!r} holds this failed run's {', '.join(kept)}: remove it (or "
                "choose another --out) before running again"
            )
        if note and isinstance(exc, ContrastkitError) and exc.args:
            exc.args = (f"{exc.args[0]}; {note}", *exc.args[1:])
        raise


def _mark_diverged(run_dir: Path, exc: DivergedError) -> None:
    """The progress metrics.json of a diverged run (written with its last checkpoint, which named the
    resume) says that it diverged and that a resume would not help."""
    metrics = read_run_metrics(run_dir)
    if metrics is None or metrics.get("finished") is not False:
        return
    metrics.update(resumable=False, note=f"diverged: {exc.args[0] if exc.args else exc}")
    try:
        write_metrics(run_dir / "metrics.json", metrics)
    except OSError:
        pass


def _open_resume(
    config: TextTrainConfig, request: ResumeRequest
) -> tuple[TextTrainConfig, Path, dict[str, Any]]:
    """The run's checkpoint (loaded; its folder locked), its folder and the configuration to continue with:
    the saved one, with the resumable options given again; any other difference is refused by name
    (:func:`~contrastkit.training.resume.resumed_config`)."""
    try:
        path, state = open_command_resume(request.run, kind="text", command=COMMAND)
    except ForeignRunError as exc:  # another command's run (or a file of one): say it for text-train
        writer = FOREIGN_RUNS[exc.kind][0]
        if exc.kind == "text":
            raise ConfigError(
                f"{request.run!r} is not a text-train checkpoint (it is a file of the text-train run "
                f"{str(exc.path)!r}): give the run folder or its {CHECKPOINT_NAME}"
            ) from None
        article = "an" if exc.kind == "audio" else "a"
        raise ConfigError(
            f"{str(exc.path)!r} belongs to {article} {exc.kind} run (written by contrastkit {writer}), not to a "
            f"text-train run: contrastkit {COMMAND} --resume continues text-train runs only"
        ) from None
    run_dir = path.parent
    saved = _absolute_paths(TextTrainConfig.typed_values(state["config"], source=str(path), allow_null=True))
    given = (  # from Python, the whole config; its unset options (None) take the run's
        dict(request.given)
        if request.given is not None
        else {k: v for k, v in config.to_dict().items() if v is not None}
    )
    # checked and resolved as text-train resolves them (lr, warm-up, key momentum from their defaults; the
    # data's paths absolute), then compared with the run's
    run_nulls = {k for k, v in saved.items() if v is None and k not in given}
    wanted = TextTrainConfig.from_dict(
        {**saved, **_absolute_paths(given)}, source="command line", nulls_from_run=run_nulls
    ).resolved()
    given = {k: getattr(wanted, k) if k != "out" else v for k, v in given.items()}
    resumed = resumed_config(
        TextTrainConfig,
        {**state, "config": saved},
        given,
        run_dir,
        COMMAND,
        TEXT_RESUMABLE_OPTIONS,
        paths=("sentences", "sts"),
    )
    return resumed, run_dir, state


def _undo_failed_run(run_dir: Path, created: list[Path]) -> list[str]:
    """After a failure that is not an interrupt: when the run saved nothing useful (no checkpoint, no
    metrics), remove the config.yaml it wrote and the folders it created (if empty), so the same --out can be
    used again. Returns the run files left in the folder (the failed run's, when it saved something)."""
    useful = [name for name in ("metrics.json", CHECKPOINT_NAME) if (run_dir / name).is_file()]
    if not useful:
        try:
            (run_dir / "config.yaml").unlink(missing_ok=True)
        except OSError:
            pass
        unlock_run_dir(run_dir)
        remove_if_empty(created)
    left = [name for name in ("config.yaml", "metrics.json", CHECKPOINT_NAME) if (run_dir / name).is_file()]
    return left


def _data_fingerprint(sentences: list[str], pairs: Any) -> dict[str, Any]:
    """SHA-256 of the training sentences (after ``--limit``) and of the evaluated STS pairs: a resume on
    other data is refused."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8")).hexdigest()

    return {
        "sentences": digest(sentences),
        "train_sentences": len(sentences),
        "sts": digest([pairs.sentences1, pairs.sentences2, pairs.scores.tolist()]),
        "sts_pairs": len(pairs),
    }


def _check_same_data(
    saved: dict[str, Any], fingerprint: dict[str, Any], run_dir: Path, sentences: Path, sts: Path
) -> None:
    old = saved.get("data_fingerprint") or {}
    changed = [
        what
        for key, what in (
            ("sentences", f"the training sentences ({sentences})"),
            ("sts", f"the STS-B pairs ({sts})"),
        )
        if old.get(key) != fingerprint[key]
    ]
    if changed:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: {' and '.join(changed)} differ from the run's (the data changed "
            "since the run started, or --sentences / --sts name other data); resume it with the run's data, "
            "or start a new run"
        )


def _restore(
    saved: dict[str, Any],
    run_dir: Path,
    total_steps: int,
    model: nn.Module,
    learner: ContrastiveLearner,
    key_encoder: MomentumEncoder | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> int:
    """Load a checkpoint's states into freshly built pieces; returns its step. A mismatch is a ConfigError."""
    if int(saved["progress"]["total"]) != total_steps:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: it has {saved['progress']['total']} steps in all, this data and "
            f"configuration give {total_steps}"
        )
    with refuse_misfit_checkpoint(
        run_dir, "it was written by another version of contrastkit: start a new run"
    ):
        model.load_state_dict(saved["model"])
        learner.negatives.load_state_dict(saved["negatives"])
        if key_encoder is not None:
            key_encoder.load_state_dict(saved["key_encoder"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    return int(saved["step"])


def _train_text(
    config: TextTrainConfig,
    run_dir: Path,
    device: torch.device,
    out: Any,
    t_start: float,
    saved: dict[str, Any] | None,
    latest: _Latest,
) -> TextTrainResult:
    sentences_path, sts_dir = _paths(config)
    sentences = load_sentences(sentences_path, skip_empty=config.skip_empty)
    n_read = len(sentences)
    torch.manual_seed(config.seed)
    if config.limit is not None and config.limit < len(sentences):
        pick = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(config.seed))
        sentences = [sentences[i] for i in pick[: config.limit].tolist()]
    pairs = load_sts_split(sts_dir, config.eval_split)
    _check_sentence_count(config, sentences_path, n_read, len(sentences))
    fingerprint = _data_fingerprint(sentences, pairs)
    if saved is not None:
        _check_same_data(saved, fingerprint, run_dir, sentences_path, sts_dir)

    encoder, tokenizer = build_text_encoder(config, sentences, tokenizer=_saved_tokenizer(saved))
    to_dict = getattr(tokenizer, "to_dict", None)
    tokenizer_dict = to_dict() if to_dict else None
    head: nn.Module = SimCSEHead(encoder.feature_dim) if config.head == "mlp" else nn.Identity()
    model = ContrastiveModel(encoder, head).to(device)
    use_bf16 = autocast_dtype(config.precision, device) is not None

    def evaluate(m: ContrastiveModel, final: bool = False) -> float:
        """STS Spearman of ``m`` (always float32: comparable across devices and precisions); the ``final``
        evaluation refuses a diverged model (non-finite embeddings) as such."""
        kw = dict(batch_size=config.eval_batch_size, max_length=config.eval_max_length, device=device)
        e1, e2 = (
            embed_sentences(m.features, tokenizer, s, **kw) for s in (pairs.sentences1, pairs.sentences2)
        )
        if final:
            refuse_diverged_features(
                {"first sentences": e1, "second sentences": e2},
                after=f"all {total_steps} steps",
                run_dir=run_dir,
                advice="a lower --lr or a higher --temperature",
            )
        return embeddings_spearman(e1, e2, pairs)

    if saved is None:
        t_eval = time.perf_counter()
        before = evaluate(model)
        eval_seconds = time.perf_counter() - t_eval
        tfidf = tfidf_spearman(pairs)
    else:  # the initial model is gone: the figures measured before the run's first step
        before = float(saved["sts_spearman_before"])
        tfidf = float(saved["sts_spearman_tfidf"])
        eval_seconds = float(saved["eval_seconds"])

    tokens = tokenizer.encode(sentences, config.max_length).to(device)
    steps_per_epoch = len(sentences) // config.batch_size
    total_steps = config.steps if config.steps is not None else steps_per_epoch * config.epochs
    views = TextViews(
        pad_id=tokenizer.pad_id,
        special_ids=tokenizer.special_ids,
        crop_p=config.crop_p,
        crop_min_ratio=config.crop_min_ratio,
        delete_p=config.delete_p,
        delete_rate=config.delete_rate,
        shuffle_p=config.shuffle_p,
        shuffle_window=config.shuffle_window,
    ).to(device)
    key_momentum = float(config.key_momentum or 0.0)
    key_encoder = MomentumEncoder(model, key_momentum) if key_momentum > 0 else None
    learner = ContrastiveLearner(
        model,
        build_negatives(config.negatives, queue_size=config.queue_size),
        CosineSimilarity(),
        build_objective(
            config.objective,
            temperature=config.temperature,
            tau_plus=config.tau_plus,
            beta=config.beta,
            margin=config.margin,
        ),
        key_encoder=key_encoder,
    ).to(device)
    assert config.lr is not None and config.warmup is not None
    optimizer = build_optimizer("adamw", learner, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(
        optimizer, warmup_steps=round(config.warmup * total_steps), total_steps=total_steps
    )
    start = 0
    if saved is not None:
        start = _restore(saved, run_dir, total_steps, model, learner, key_encoder, optimizer, scheduler)

    name = (
        "all-MiniLM-L6-v2"
        if config.encoder == "pretrained"
        else (
            f"scratch transformer {config.depth}x{config.dim} ({config.tokenizer} tokenizer, {tokenizer.vocab_size} ids)"
        )
    )
    print(
        f"contrastkit text-train: {len(sentences)} sentences from {sentences_path}, STS-B {config.eval_split} "
        f"({len(pairs)} pairs)\n"
        f"  encoder={name} head={config.head} views={_views_note(views)}\n"
        f"  objective={config.objective}(temperature={config.temperature}) negatives={config.negatives}"
        f"{f' key_momentum={key_momentum:g}' if key_encoder is not None else ''}\n"
        f"  {total_steps} steps, batch {config.batch_size}, adamw lr={config.lr:g}, max_length {config.max_length}, "
        f"device={device}, precision={'bf16' if use_bf16 else 'fp32'}\n"
        f"  STS-B {config.eval_split} Spearman x100 before training: {before:.2f} (TF-IDF reference {tfidf:.2f})"
        + (f"\n  resumed at step {start} of {total_steps} from {run_dir / CHECKPOINT_NAME}" if saved else ""),
        file=out,
        flush=True,
    )
    for warning in text_unused_options(config):  # the run's config.yaml records them as if used
        print(f"WARNING: {warning}", file=out, flush=True)

    loss_curve: list[dict[str, float]] = [dict(row) for row in saved["loss_curve"]] if saved else []
    train_before = float(saved["train_seconds"]) if saved else 0.0  # earlier sessions of the run
    elapsed_before = float(saved["elapsed_seconds"]) if saved else 0.0
    resumed_at: list[int] = [*saved["resumed_at_steps"], start] if saved else []

    def base_metrics(steps_done: int, train_seconds: float) -> dict[str, Any]:
        return {
            "sts_split": config.eval_split,
            "sts_pairs": len(pairs),
            "sts_spearman_before": before,
            "sts_spearman_after": None,
            "sts_spearman_tfidf": tfidf,
            "before_is": "pretrained all-MiniLM-L6-v2"
            if config.encoder == "pretrained"
            else "random initialisation",
            "encoder": name,
            "train_sentences": len(sentences),
            "finished": False,
            "steps": steps_done,
            "total_steps": total_steps,
            "final_loss": loss_curve[-1]["loss"] if loss_curve else float("nan"),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "sentences_per_second": steps_done * config.batch_size / max(train_seconds, 1e-9),
            "total_seconds": elapsed_before + time.perf_counter() - t_start,
            "device": str(device),
            "resumed_at_steps": list(resumed_at),
            "loss_curve": loss_curve,
        }

    def finished_state(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "model": model.state_dict(),
            "tokenizer": tokenizer_dict,
            "finished": True,
            "step": total_steps,
            "total_steps": total_steps,
            "metrics": {k: v for k, v in metrics.items() if k != "loss_curve"},
            "progress": {"done": total_steps, "total": total_steps, "unit": "step"},
        }

    if saved is not None:
        warn_edited_config(
            run_dir / "config.yaml",
            saved.get("config"),
            out,
            example=f"contrastkit {COMMAND} --resume RUN --log-every ...",
        )
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    write_atomic(run_dir / "config.yaml", lambda f: f.write(text), binary=False)
    gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    pending: list[Tensor] = []
    order = torch.empty(0, dtype=torch.long, device=device)
    if saved is not None:
        gen.set_state(saved["generator"])
        order = saved["order"].to(device)
        pending = list(saved["pending_losses"].to(device).unbind(0))
        restore_rng_state(saved["rng"])  # last: nothing draws from the global generators before the next step
    latest.step, latest.total = (start if saved is not None else None), total_steps
    bar = _progress(total_steps, config.progress)
    if start:
        bar.update(start)
    t_train = time.perf_counter()

    def train_seconds_now() -> float:
        return train_before + time.perf_counter() - t_train

    def log(step: int) -> None:
        """Read the pending losses (one synchronisation) into the loss curve; stop on a non-finite one."""
        losses = torch.stack(pending).float().cpu().tolist()
        pending.clear()
        mean_loss = sum(losses) / len(losses)
        if not all(math.isfinite(v) for v in losses):
            raise DivergedError(
                f"the loss became non-finite by step {step}; start a new run with a lower --lr or a higher "
                "--temperature (a resume would repeat the same steps)"
            )
        seconds = train_seconds_now()
        loss_curve.append({"step": step, "loss": mean_loss, "seconds": seconds})
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        bar.write(f"step {step}/{total_steps}  loss {mean_loss:.4f}  {seconds:.0f} s", file=sys.stderr)

    def resumable_state(step: int) -> dict[str, Any]:
        """Everything the loop needs to continue after ``step`` exactly (the pending losses unlogged, so
        the loss curve of a resumed run is the uninterrupted run's)."""
        return {
            "config": config.to_dict(),
            "tokenizer": tokenizer_dict,
            "device": str(device),
            "model": model.state_dict(),
            "key_encoder": None if key_encoder is None else key_encoder.state_dict(),
            "negatives": learner.negatives.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": gen.get_state(),
            "rng": rng_state(),
            "step": step,
            "total_steps": total_steps,
            "order": order.cpu(),
            "pending_losses": torch.stack(pending).detach().cpu() if pending else torch.empty(0),
            "loss_curve": [dict(row) for row in loss_curve],
            "train_seconds": train_seconds_now(),
            "elapsed_seconds": elapsed_before + time.perf_counter() - t_start,
            "eval_seconds": eval_seconds,
            "sts_spearman_before": before,
            "sts_spearman_tfidf": tfidf,
            "resumed_at_steps": list(resumed_at),
            "data_fingerprint": fingerprint,
            "progress": {"done": step, "total": total_steps, "unit": "step"},
            "finished": False,
        }

    def write_checkpoint(step: int) -> Path:
        """The resumable checkpoint of ``step``, written atomically; a non-finite state is refused and the
        previous checkpoint kept."""
        state = resumable_state(step)
        bad = nonfinite_state_tensors(state)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            kept = (
                f"{run_dir / CHECKPOINT_NAME} still holds step {latest.step}"
                if latest.step is not None
                else "no checkpoint was written"
            )
            raise DivergedError(
                f"the training state at step {step} has non-finite values in {bad[0]}{more}: training "
                f"diverged, so it was not written ({kept}); start a new run with a lower --lr or a higher "
                "--temperature (a resume would repeat the same steps)"
            )
        path = save_checkpoint(state, run_dir / CHECKPOINT_NAME)
        latest.step = step
        return path

    stopped: int | None = None
    step = start
    learner.train()
    # a first Ctrl-C / SIGTERM stops at the next step, a second one at once; during the final evaluation
    # (the checkpoint of the last step written) a first one stops at once: the resume only evaluates
    with StopSignals() as stop:
        for step in range(start + 1, total_steps + 1):
            i = (step - 1) % steps_per_epoch
            if i == 0:
                order = torch.randperm(len(sentences), device=device, generator=gen)
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            ids = trim_padding(tokens[idx], tokenizer.pad_id)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                # the indices: a queue larger than the sentences of an epoch masks each sentence's own keys
                result = learner(views(ids, generator=gen), views(ids, generator=gen), indices=idx)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            if key_encoder is not None:
                key_encoder.update(model)
            scheduler.step()
            pending.append(result.loss.detach())
            if step % config.log_every == 0 or step == total_steps:
                log(step)
            bar.update(1)
            if step < total_steps:
                if stop.requested is not None:
                    stopped = stop.requested
                    break
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    write_checkpoint(step)  # then its metrics.json: a kill -9 leaves the progress visible
                    progress = base_metrics(step, train_seconds_now())
                    write_metrics(run_dir / "metrics.json", _checkpoint_metrics(progress, pending, run_dir))
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = train_seconds_now()
        if step > start:  # the last step's too: a kill during the final evaluation then loses
            path = write_checkpoint(step)  # no step (a resume of it only evaluates and finishes)
            _write_last_step_metrics(base_metrics(step, train_seconds), pending, run_dir)
        else:  # resumed after the last step: its checkpoint holds it
            path = run_dir / CHECKPOINT_NAME
        if stopped is None:
            stopped = stop.requested  # in the last step
        if stopped is not None:
            metrics = _interrupted_metrics(base_metrics(step, train_seconds), pending, stopped, run_dir)
            write_metrics(run_dir / "metrics.json", metrics)
            raise TrainingInterrupted(
                interrupted_message(
                    stopped, command=COMMAND, run_dir=run_dir, done=step, total=total_steps, unit="step"
                ),
                signum=stopped,
                checkpoint=path,
                step=step,
            )

        def stopped_in_final_evaluation(signum: int) -> str:
            """A stop signal during the final evaluation: the interrupted metrics.json, and what to say."""
            metrics = _interrupted_metrics(base_metrics(step, train_seconds), pending, signum, run_dir)
            write_metrics(run_dir / "metrics.json", metrics)
            return (
                f"{signal.Signals(signum).name} received during the final evaluation: all {total_steps} "
                f"steps are done and {path} keeps them (resumable); continue with: contrastkit {COMMAND} "
                f"--resume {run_dir} (it only evaluates and finishes the run)"
            )

        with final_evaluation(
            command=COMMAND, run_dir=run_dir, total_steps=total_steps, on_stop=stopped_in_final_evaluation
        ):
            after = evaluate(model, final=True)
        # the final writes: a first signal now lets them finish (milliseconds), a second one stops at once
        metrics = base_metrics(total_steps, train_seconds)
        metrics.update(
            sts_spearman_after=after,
            finished=True,
            total_seconds=elapsed_before + time.perf_counter() - t_start,
        )
        checkpoint = run_dir / CHECKPOINT_NAME
        written = [run_dir / "metrics.json", run_dir / "config.yaml"]
        if config.save_model:  # replaces the resumable checkpoint (its results are in it too)
            save_checkpoint(finished_state(metrics), checkpoint)
            latest.step = None
            written.append(checkpoint)
            write_metrics(run_dir / "metrics.json", metrics)
        else:  # the results first: a kill in between leaves a resumable run, never a lost one
            write_metrics(run_dir / "metrics.json", metrics)
            try:
                checkpoint.unlink(missing_ok=True)  # the model was not to be kept
                latest.step = None
            except OSError:
                pass
    rows = [
        (f"before training ({metrics['before_is']})", before),
        (f"after {total_steps} steps", after),
        ("TF-IDF bag of words", tfidf),
    ]
    width = max(len(label) for label, _ in rows)
    print(
        f"STS-B {config.eval_split} Spearman x100 ({len(pairs)} pairs, cosine):\n"
        + "".join(f"  {label:<{width}}  {value:6.2f}\n" for label, value in rows)
        + f"time: {metrics['total_seconds']:.1f} s total, {train_seconds:.1f} s training, "
        f"{metrics['sentences_per_second']:.0f} sentences/s on {device}"
        + (f" (resumed at step {', '.join(map(str, resumed_at))})" if resumed_at else "")
        + f"\nwrote {', '.join(str(p) for p in written)}",
        file=out,
        flush=True,
    )
    return TextTrainResult(run_dir=run_dir, metrics=metrics, model=model, tokenizer=tokenizer)


def _with_pending_losses(metrics: dict[str, Any], pending: list[Tensor]) -> dict[str, Any]:
    """``metrics`` with the loss curve ending at its step: the mean of the losses since the last logged
    one as a last row (a checkpoint keeps them unlogged; the run's own curve is left as it is)."""
    if pending:
        losses = torch.stack(pending).float().cpu().tolist()
        row = {
            "step": metrics["steps"],
            "loss": sum(losses) / len(losses),
            "seconds": metrics["train_seconds"],
        }
        metrics.update(loss_curve=[*metrics["loss_curve"], row], final_loss=row["loss"])
    return metrics


def _checkpoint_metrics(metrics: dict[str, Any], pending: list[Tensor], run_dir: Path) -> dict[str, Any]:
    """metrics.json beside a periodic checkpoint (or the last step's): unfinished and resumable from it, the
    loss curve so far, and a note naming the resume (a run killed before its next checkpoint is continued
    from this one)."""
    step, total = metrics["steps"], metrics["total_steps"]
    last = ", all of them: the final evaluation runs" if step == total else ""
    _with_pending_losses(metrics, pending)
    metrics.update(
        resumable=True,
        note=f"in progress: {CHECKPOINT_NAME} holds step {step} of {total}{last} (this file is rewritten at "
        "each checkpoint and when the run finishes); if the run was killed or crashed, continue with: "
        f"contrastkit {COMMAND} --resume {run_dir}",
    )
    return metrics


def _write_last_step_metrics(metrics: dict[str, Any], pending: list[Tensor], run_dir: Path) -> None:
    """metrics.json beside the last step's checkpoint, before the final evaluation (a kill -9 during it
    leaves it current, as at a periodic checkpoint). Not written (a disk full, ...): a warning, and the
    evaluation goes on; the finished metrics.json, written after it, then says whether the disk holds it."""
    try:
        write_metrics(run_dir / "metrics.json", _checkpoint_metrics(metrics, pending, run_dir))
    except ContrastkitError as exc:
        print(f"WARNING: {exc}; the final evaluation goes on", file=sys.stderr, flush=True)


def _interrupted_metrics(
    metrics: dict[str, Any], pending: list[Tensor], signum: int, run_dir: Path
) -> dict[str, Any]:
    """metrics.json of a stopped run: interrupted and resumable, the loss curve with the steps since the
    last logged one (the checkpoint keeps them unlogged)."""
    sig = signal.Signals(signum).name
    step, total = metrics["steps"], metrics["total_steps"]
    what = (
        "all steps are done, the final evaluation was stopped"
        if step == total
        else "the model is unfinished and was not evaluated after training"
    )
    _with_pending_losses(metrics, pending)
    metrics.update(
        interrupted=sig,
        resumable=True,
        note=f"stopped by {sig} at step {step} of {total}: {what}; continue with: contrastkit {COMMAND} "
        f"--resume {run_dir}",
    )
    return metrics


def _check_sentence_count(config: TextTrainConfig, path: Path, n_read: int, n: int) -> None:
    """Enough training sentences for one batch, and at least 2 (each is contrasted with the others)."""
    limited = n < n_read
    if n < 2:
        source = f"--limit {config.limit} keeps" if limited else f"text file {str(path)!r} holds"
        fix = "raise --limit" if limited else "add sentences to the file (one a line)"
        raise ConfigError(
            f"{source} {n} sentence; contrastive training needs at least 2 (each sentence is contrasted "
            f"with the others in its batch): {fix}"
        )
    if config.batch_size > n:
        kept = f" (--limit {config.limit} of {n_read})" if limited else ""
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the {n} training sentences{kept}; "
            f"use --batch-size {n} or less"
        )


def _views_note(views: TextViews) -> str:
    if views.is_identity:
        return "identity (dropout only, SimCSE)"
    parts = []
    if views.crop_p:
        parts.append(f"crop(p={views.crop_p:g}, min_ratio={views.crop_min_ratio:g})")
    if views.delete_p:
        parts.append(f"delete(p={views.delete_p:g}, rate={views.delete_rate:g})")
    if views.shuffle_p:
        parts.append(f"shuffle(p={views.shuffle_p:g}, window={views.shuffle_window})")
    return "+".join(parts)


__all__ = [
    "TEXT_RESUMABLE_OPTIONS",
    "ResumeRequest",
    "SimCSEHead",
    "TextTrainConfig",
    "TextTrainResult",
    "add_arguments",
    "build_text_encoder",
    "config_from_args",
    "train_text",
]
