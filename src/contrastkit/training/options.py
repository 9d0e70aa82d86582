"""Checks of single option values shared by the commands' configs (``audio-train``, ``sela``): each
failed check is a :class:`ConfigError` naming the option, its flag, what it must be and the value given;
and which of a config dataclass's options a command line gave (:func:`given_flags`)."""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, fields
from typing import Any

from contrastkit.errors import ConfigError


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_positive(v: Any) -> bool:
    """A finite number above 0."""
    return is_number(v) and v > 0


def is_integer(v: Any, low: int) -> bool:
    """An int (not a bool) of at least ``low``."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def check_option(ok: bool, name: str, what: str, value: Any) -> None:
    """Raise :class:`ConfigError` ``option NAME (--flag) must be WHAT, got VALUE`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"option {name} (--{name.replace('_', '-')}) must be {what}, got {value!r}")


SEED_LIMIT = 2**32
"""Seeds are integers in [0, 2**32): numpy's and scikit-learn's range (torch takes more)."""


def check_seed(name: str, value: Any) -> None:
    """``--seed`` and the like: an integer in [0, 2**32). A negative or huge seed failed late, in numpy,
    scikit-learn's k-means or torch, with a traceback (``train --seed -1`` even ran, and ``eval`` crashed)."""
    check_option(is_integer(value, 0) and value < SEED_LIMIT, name, "an integer in [0, 2**32)", value)


def check_lr_and_weight_decay(lr: Any, weight_decay: Any) -> None:
    """``--lr`` (None: derived) a positive number, ``--weight-decay`` (None: the optimizer's) a number >= 0."""
    check_option(lr is None or is_positive(lr), "lr", "a positive number (the peak learning rate)", lr)
    check_option(
        weight_decay is None or (is_number(weight_decay) and weight_decay >= 0),
        "weight_decay",
        "a number >= 0",
        weight_decay,
    )


def flag_help(f: Field[Any]) -> str:
    """A config field's ``--help`` text: its help, then ``(default: X)`` unless the help already says what
    the default is (a derived one: "default: the optimizer's base rate x batch/256")."""
    text = f.metadata.get("help", "")
    if "default" in text:
        return text
    return f"{text} (default: {f.default if f.default is not MISSING else None})"


OBJECTIVE_FLAGS = ("temperature", "tau_plus", "beta", "margin", "mining")
"""The objectives' options that the commands pass to every objective (each takes those it names)."""


def unused_option_warnings(config: Any, unused: list[tuple[str, str]]) -> list[str]:
    """One warning each for the options of ``unused`` (``(name, why it is not used)``) that ``config`` (a
    config dataclass) sets away from their defaults: an option silently doing nothing reads as used in the
    run's recorded config."""
    defaults = {f.name: f.default for f in fields(config)}
    return [
        f"--{name.replace('_', '-')} {getattr(config, name)} has no effect in this run: {why}"
        for name, why in unused
        if getattr(config, name) != defaults[name]
    ]


def small_queue_warnings(negatives: str, queue_size: int, keys_per_step: int) -> list[str]:
    """A warning when a queue source's ``queue_size`` is below the ``keys_per_step`` one step enqueues (the
    global batch, twice with a key encoder's symmetrised step): the queue then holds part of the last step's
    keys and none older, and a MoCo queue is meant to reach back over many steps."""
    if "queue" not in negatives or queue_size >= keys_per_step:
        return []
    return [
        f"--queue-size {queue_size} is smaller than the {keys_per_step} keys one step enqueues: the queue holds "
        f"only the newest {queue_size} keys of the previous step and none older (no more negatives than one "
        f"batch gives); raise --queue-size to a multiple of {keys_per_step} (MoCo's: 65536)"
    ]


def objective_unused(objective: str, options: tuple[str, ...] = OBJECTIVE_FLAGS) -> list[tuple[str, str]]:
    """The ``options`` that objective ``objective`` does not take, each with why (for
    :func:`unused_option_warnings`)."""
    from contrastkit.objectives import OBJECTIVES, objective_parameters

    takes = [n for n in options if n in objective_parameters(OBJECTIVES[objective])]
    flags = ", ".join("--" + n.replace("_", "-") for n in takes) or "none of these options"
    return [
        (n, f"--objective {objective} does not use it (it takes {flags})") for n in options if n not in takes
    ]


def used_only_by(
    rules: list[tuple[tuple[str, ...], bool, str]], unused: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``unused`` extended with the options of each rule ``(names, not used in this run, what uses them)``
    whose condition holds, each option once (the first reason found stays)."""
    seen = {name for name, _ in unused}
    out = list(unused)
    for names, not_used, by in rules:
        for name in names:
            if not_used and name not in seen:
                out.append((name, f"it is used only by {by}"))
                seen.add(name)
    return out


def batch_larger_than_data(batch_size: int, n: int, limit: int | None, unit: str) -> ConfigError:
    """The error for a batch larger than the training set of ``n`` ``unit`` (clips, items), with the
    batch size that works and, under ``--limit``, a larger limit (a batch of 1 has no in-batch negative)."""
    return ConfigError(
        f"batch size {batch_size} is larger than the training set ({n}{' ' + unit if unit else ''}): use "
        "--batch-size "
        + (f"{n} or less" if n >= 2 else f"2 or more with at least 2 {unit or 'items'}")
        + (f", or a larger --limit (it is {limit})" if limit is not None else "")
    )


def given_flags(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options of the dataclass ``cls`` given on the command line (an argparse default of None means
    "not given"), in the order of its fields."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
