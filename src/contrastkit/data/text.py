"""Text data: unlabeled sentences (one a line, plain or gzip) and STS Benchmark sentence pairs.

:func:`load_sentences` reads a corpus such as ``text/sentences.txt.gz`` (SimCSE-style unsupervised
training). :func:`load_sts` reads one STS-B csv in its original format: tab-separated, no quoting
(``csv.QUOTE_NONE``), at least 7 fields a row (genre, file, year, id, score, sentence 1, sentence 2),
some rows carrying extra source fields after them. Every problem (a missing file, a corrupt gzip, empty
lines, a bad score) is a :class:`~contrastkit.errors.DataError` that names the file and the line.
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from contrastkit.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
STS_MIN_FIELDS = 7
STS_SCORE_RANGE = (0.0, 5.0)
SHARED_DATA_ENV = "CONTRASTKIT_SHARED_DATA"
_SHOWN_LINES = 10


def shared_data_dir() -> Path:
    """The shared data folder: ``$CONTRASTKIT_SHARED_DATA``, else ``../shared/data`` from the repository.

    For a source checkout the repository is the folder above ``src/``; otherwise ``../shared/data`` is
    taken relative to the working directory.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    if (repo / "src" / "contrastkit").is_dir():
        return repo.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def _read_text(path: Path) -> str:
    """Whole file as UTF-8 text, gunzipped when it starts with the gzip magic bytes."""
    if path.is_dir():
        raise DataError(
            f"text file {str(path)!r} is a folder; give a file (one sentence a line, plain or .gz), "
            "not the folder that holds it"
        )
    if not path.is_file():
        raise DataError(f"text file {str(path)!r} does not exist; check the path")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"text file {str(path)!r} cannot be read: {exc}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"text file {str(path)!r} is a corrupt or truncated gzip file ({exc}); "
                "re-create or re-download it"
            ) from None
    if raw.startswith(codecs.BOM_UTF8):  # a UTF-8 byte-order mark (some editors write one): not text
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"text file {str(path)!r}, line {line}: not valid UTF-8 ({exc.reason}); save the file as UTF-8"
        ) from None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _split_lines(text: str) -> list[str]:
    """The lines of ``text`` as editors count them: broken at ``\n``, ``\r\n`` and ``\r`` only (``wc -l`` and
    ``sed -n`` count ``\n`` alone, so after a lone ``\r`` their numbers run behind)
    (``str.splitlines`` also breaks at form feeds, ``\x1c``-``\x1e``, ``\x85``, U+2028 and U+2029, which would
    shift the line numbers that errors name and split one sentence in two). A final line break ends the last
    line; it does not start an empty one."""
    lines = _LINE_BREAK.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _line_list(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_SHOWN_LINES])
    more = len(numbers) - _SHOWN_LINES
    return shown + (f" and {more} more" if more > 0 else "")


def load_sentences(path: str | Path, *, skip_empty: bool = False, limit: int | None = None) -> list[str]:
    """Sentences of a text file, one a line (plain text or gzip, detected from the content).

    Leading and trailing whitespace is stripped. An empty (or whitespace-only) line is an error naming the
    line numbers, unless ``skip_empty=True`` drops them. ``limit`` keeps the first ``limit`` sentences.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    p = Path(path)
    lines = _split_lines(_read_text(p))
    sentences: list[str] = []
    empty: list[int] = []
    for number, line in enumerate(lines, start=1):
        s = line.strip()
        if s:
            sentences.append(s)
        else:
            empty.append(number)
    if empty and not skip_empty:
        raise DataError(
            f"text file {str(p)!r} has {len(empty)} empty line(s): line {_line_list(empty)}; remove them "
            "or pass skip_empty=True (--skip-empty) to drop them"
        )
    if not sentences:
        raise DataError(f"text file {str(p)!r} holds no sentences; expected one sentence a line")
    return sentences[:limit] if limit is not None else sentences


@dataclass
class StsPairs:
    """STS-B sentence pairs with their gold similarity (0-5), plus where they came from."""

    sentences1: list[str]
    sentences2: list[str]
    scores: Tensor
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.sentences1)
        if len(self.sentences2) != n or tuple(self.scores.shape) != (n,):
            raise DataError(
                f"STS pairs need as many second sentences and scores as first sentences ({n}); got "
                f"{len(self.sentences2)} and shape {tuple(self.scores.shape)}"
            )

    def __len__(self) -> int:
        return len(self.sentences1)


def load_sts(path: str | Path) -> StsPairs:
    """One STS Benchmark csv (e.g. ``sts-test.csv``): score in field 5, sentences in fields 6 and 7."""
    p = Path(path)
    text = _read_text(p)
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    lo, hi = STS_SCORE_RANGE
    # tab-separated without quoting (csv.QUOTE_NONE reads it the same way, but refuses fields over 128 KiB)
    rows = (line.split("\t") if line else [] for line in _split_lines(text))
    for number, row in enumerate(rows, start=1):
        if not row or (len(row) == 1 and not row[0].strip()):
            raise DataError(f"STS file {str(p)!r}, line {number}: empty line; remove it")
        if len(row) < STS_MIN_FIELDS:
            raise DataError(
                f"STS file {str(p)!r}, line {number}: {len(row)} tab-separated field(s), expected at least "
                f"{STS_MIN_FIELDS} (genre, file, year, id, score, sentence 1, sentence 2)"
            )
        field = row[4].strip()
        try:
            score = float(field)
        except ValueError:
            score = float("nan")
        if not lo <= score <= hi:  # also catches NaN
            raise DataError(
                f"STS file {str(p)!r}, line {number}: score field {field!r} is not a number in "
                f"[{lo:g}, {hi:g}]"
            )
        a, b = row[5].strip(), row[6].strip()
        if not a or not b:
            raise DataError(f"STS file {str(p)!r}, line {number}: sentence {1 if not a else 2} is empty")
        s1.append(a)
        s2.append(b)
        scores.append(score)
    if not scores:
        raise DataError(f"STS file {str(p)!r} holds no sentence pairs")
    if len(set(scores)) < 2:  # a rank correlation with these gold scores is undefined (NaN)
        raise DataError(
            f"STS file {str(p)!r} holds {len(scores)} pair(s), all scored {scores[0]:g}: Spearman's "
            "correlation needs at least 2 different gold scores; give the full STS-B split"
        )
    return StsPairs(s1, s2, torch.tensor(scores, dtype=torch.float64), source=str(p))


def load_sts_split(root: str | Path, split: str = "test") -> StsPairs:
    """``root/sts-{split}.csv`` for ``split`` in train | dev | test."""
    if split not in ("train", "dev", "test"):
        raise DataError(f"unknown STS-B split {split!r}; choose one of: train, dev, test")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(
            f"STS-B folder {str(root)!r} is a file; give the folder that holds sts-{{train,dev,test}}.csv"
        )
    return load_sts(root / f"sts-{split}.csv")


__all__ = ["StsPairs", "load_sentences", "load_sts", "load_sts_split", "shared_data_dir"]
