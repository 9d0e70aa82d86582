"""Errors that contrastkit reports to users.

Every error raised for bad input derives from :class:`ContrastkitError`; the command line prints its
message (which names the problem and what to do) and exits with status 2, never a traceback. The
library's data, argument and shape errors (:class:`DataError`, :class:`ConfigError`, :class:`ShapeError`)
are ``ValueError`` s too, as Python's own decoding and argument errors are: a caller who catches
``ValueError`` around a call into the library catches them all (float labels, for example, are a
``DataError`` in the evaluation functions and a ``ConfigError`` in the negative sources).
"""

from __future__ import annotations

import torch


class ContrastkitError(Exception):
    """Base class for errors caused by input the user can fix."""


class DataError(ContrastkitError, ValueError):
    """A data set cannot be found, read or decoded, or the tensors given as data (features, labels) are
    not usable (also a ``ValueError``)."""


class UndecodableImageError(DataError):
    """One image of a streamed data set cannot be decoded: ``index`` is its position in the split and
    ``name`` its name there (as :class:`~contrastkit.data.stream.ImageFileDataset` lists them), when known;
    ``problem`` the message without its advice."""

    def __init__(
        self, message: str, *, problem: str | None = None, index: int | None = None, name: str | None = None
    ) -> None:
        super().__init__(message)
        self.problem = message if problem is None else problem
        self.index, self.name = index, name


class ConfigError(ContrastkitError, ValueError):
    """A configuration value or argument is invalid or the combination of values is impossible (also a
    ``ValueError``, as Python's own argument errors are)."""


class ShapeError(ContrastkitError, ValueError):
    """Tensors with shapes that do not fit together (scores and masks, embeddings, labels)."""


class TrainingError(ContrastkitError):
    """Training cannot go on (for example the loss became NaN)."""


class DivergedError(TrainingError):
    """Training diverged (non-finite losses, state or features): a resume would repeat it, so the advice is a
    new run with other settings, never ``--resume``."""


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """Whether a tensor of ``dtype`` holds integer ids (labels, indices): not float, complex or bool, which
    casting to int64 would silently truncate or reinterpret. The label and index checks all use it."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
