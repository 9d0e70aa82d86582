"""The ``contrastkit`` command line: ``train`` and ``eval``.

Training flags are generated from :class:`~contrastkit.training.config.TrainConfig`, so every option has
one default, one help text and one check. Errors in the user's input are printed as one message and the
command exits with status 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from contrastkit import __version__
from contrastkit.errors import ContrastkitError
from contrastkit.training.checkpoint import ForeignRunError
from contrastkit.training.options import flag_help
from contrastkit.training.resume import TrainingInterrupted

EXAMPLES = """examples:
  contrastkit train                                   # SimCLR on the embedded 8x8 digits (CPU, ~1 min)
  contrastkit train --data ../shared/data/cifar10-jpeg.zip --limit 2000 --epochs 2
  contrastkit train --data photos/ --image-size 64 --config recipe.toml --lr 0.3
  contrastkit train --negatives mined --mined-negatives 16 --objective debiased   # ANCE-mined
  torchrun --standalone --nproc-per-node 2 -m contrastkit train --negatives gather  # data parallel
  contrastkit eval runs/digits-infonce-20261122-101500 --all
"""


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from contrastkit.training.config import TrainConfig

    parser.add_argument(
        "--config", metavar="FILE", help="TOML or YAML file of options (keys as below, '-' or '_'); flags win"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run (its folder or checkpoint.pt) from its latest checkpoint, with its saved "
        "options; only --device, --precision, --compile, --progress, --knn-every, --checkpoint-every, "
        "--skip-nonfinite, --deterministic, --tensorboard, --workers and --data-placement (auto|device|host) may be "
        "given again with other values",
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type)
        help_text = flag_help(f)
        if t.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind: Any = int if t.startswith("int") else float if t.startswith("float") else str
        metavar = {int: "N", float: "X", str: "NAME"}[kind]
        if f.name in ("data", "out"):
            metavar = "PATH" if f.name == "out" else "digits|PATH"
        parser.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


def finite_float(text: str) -> float:
    """argparse type of every float flag: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _finite_float_flags(parser: argparse.ArgumentParser) -> None:
    """Give every ``type=float`` flag of ``parser`` and its sub-commands the :func:`finite_float` check (the
    sub-commands' flags are built from their config dataclasses in several modules)."""
    for action in parser._actions:
        if action.type is float:
            action.type = finite_float
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _finite_float_flags(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contrastkit",
        description="Learn representations by contrast: views -> encoder -> negatives -> score -> objective.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"contrastkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    train = sub.add_parser(
        "train",
        help="train an encoder and evaluate it with kNN",
        description="Train a contrastive encoder; writes metrics.json, config.yaml and checkpoint.pt into the "
        "run folder and prints kNN top-1 next to the random-init and raw-pixel references.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _train_flags(train)
    ev = sub.add_parser(
        "eval",
        help="re-evaluate a run folder or checkpoint",
        description="kNN top-1 of a trained encoder (and the random-init and raw-pixel references), and on "
        "request the linear probe, few-label fine-tuning and the embedding's geometry; every result, with its "
        'protocol, is merged into the run folder\'s metrics.json under "evaluation".',
    )
    ev.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder or a checkpoint.pt file")
    ev.add_argument("--data", metavar="digits|PATH", help="data to evaluate on (default: the training data)")
    ev.add_argument("--limit", type=int, metavar="N", help="use at most N images per split")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    ev.add_argument("--knn-k", type=int, metavar="N", help="k of the weighted kNN (default: as trained)")
    ev.add_argument(
        "--knn-temperature", type=float, metavar="X", help="kNN temperature (default: as trained)"
    )
    ev.add_argument(
        "--linear-probe",
        action="store_true",
        help="logistic regression on frozen, standardised backbone features (L-BFGS on the device, weight "
        "decay chosen on a held-out 20%% of train)",
    )
    ev.add_argument(
        "--few-label",
        nargs="?",
        const="0.01,0.1",
        metavar="FRACTIONS",
        help="fine-tune backbone + linear head on these fractions of the labels, class-balanced "
        "(SimCLRv2 protocol; default 0.01,0.1)",
    )
    ev.add_argument(
        "--geometry",
        action="store_true",
        help="alignment and uniformity (Wang & Isola 2020) and k-means NMI/ARI on the eval images",
    )
    ev.add_argument("--all", action="store_true", help="--linear-probe --few-label --geometry")
    from contrastkit.training.text import add_arguments as text_train_flags

    text_train_flags(
        sub.add_parser(
            "text-train",
            help="train a sentence encoder on unlabeled sentences (SimCSE-style); STS-B Spearman before/after",
            description="Contrastive training of a sentence encoder (pretrained all-MiniLM-L6-v2 or a small "
            "transformer from scratch) on one-sentence-a-line text; writes metrics.json with STS-B "
            "Spearman x100 before and after training and a TF-IDF reference.",
        )
    )
    from contrastkit.reporting.cli import add_parsers as reporting_parsers

    reporting_parsers(sub)
    from contrastkit.training.audio import add_parsers as audio_parsers

    audio_parsers(sub)  # audio-train, sela
    _finite_float_flags(parser)
    return parser


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user set: the config file's, then the flags given (flags win)."""
    from contrastkit.training.config import TrainConfig, load_config_file

    values: dict[str, Any] = {}
    if args.config:
        values.update({k.replace("-", "_"): v for k, v in load_config_file(args.config).items()})
        TrainConfig.from_dict(values, source=args.config)  # report unknown keys against the file
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return values


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < config file < flags."""
    from contrastkit.training.config import TrainConfig

    return TrainConfig.from_dict(_given_options(args), source=args.config or "command line")


def _train(args: argparse.Namespace) -> None:
    from contrastkit.errors import ConfigError
    from contrastkit.training import train
    from contrastkit.training.checkpoint import refuse_foreign_run
    from contrastkit.training.resume import resume_config

    if args.resume is None:
        train(config_from_args(args))
        return
    refuse_foreign_run(args.resume)  # a text-train / audio-train / sela run, even one without checkpoint.pt
    given = _given_options(args)
    if "out" in given:
        raise ConfigError("--resume continues the run in its own folder: drop --out")
    config, _ = resume_config(args.resume, given)
    train(config, resume=args.resume)


def _rank_prefix() -> str:
    """``[rank R] `` for processes other than rank 0 of a torchrun launch (every rank reports its error)."""
    r = os.environ.get("RANK")
    return f"[rank {r}] " if r not in (None, "0") and os.environ.get("WORLD_SIZE", "1") != "1" else ""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def _warning_lines() -> Iterator[None]:
    """The library's own warnings (``warnings.warn`` in contrastkit: skipped files, converted images...) as
    ``contrastkit: WARNING: ...`` lines, like the commands' other warnings, not Python's
    ``/path/to/folder.py:573: UserWarning: ...`` with a source line; other packages' warnings unchanged."""
    plain = warnings.formatwarning

    def formatwarning(message: Any, category: Any, filename: str, lineno: int, line: Any = None) -> str:
        if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep) and issubclass(category, UserWarning):
            return f"{_rank_prefix()}contrastkit: WARNING: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = plain


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _warning_lines():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "eval":
            from contrastkit.training import evaluate_checkpoint

            evaluate_checkpoint(
                args.run,
                data=args.data,
                limit=args.limit,
                device=args.device,
                knn_k=args.knn_k,
                knn_temperature=args.knn_temperature,
                linear_probe=args.linear_probe or args.all,
                few_label=args.few_label or ("0.01,0.1" if args.all else None),
                geometry=args.geometry or args.all,
            )
        elif args.command == "text-train":
            from contrastkit.training.text import config_from_args as text_config
            from contrastkit.training.text import train_text

            train_text(text_config(args))
        elif args.command in ("report", "embed", "export"):
            from contrastkit.reporting.cli import run_command

            run_command(args)
        elif args.command in ("audio-train", "sela"):
            from contrastkit.training.audio import run_command as audio_command

            audio_command(args)
    except TrainingInterrupted as exc:
        print(f"{_rank_prefix()}contrastkit: {exc}", file=sys.stderr)
        return exc.exit_status
    except ForeignRunError as exc:  # another command's run: say what this command takes instead
        command = f"{args.command} --resume" if getattr(args, "resume", None) else args.command
        print(f"{_rank_prefix()}contrastkit: error: {exc.message_for(command)}", file=sys.stderr)
        return 2
    except ContrastkitError as exc:
        print(f"{_rank_prefix()}contrastkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}contrastkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
