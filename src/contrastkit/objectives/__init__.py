"""Objectives: how scores become a loss.

Every objective is called as ``loss = objective(pos, neg, neg_mask=None)``; supervised ones
(``needs_labels = True``) also take ``pos_mask``. See :mod:`contrastkit.objectives.base` for the contract.

========================  =============================================  ======================
CLI name                  class                                          paper
========================  =============================================  ======================
``infonce``               :class:`InfoNCE` (temperature)                 van den Oord 2018
``triplet``               :class:`Triplet` (margin, mining, reduction)   Schroff 2015
``margin``                :class:`Margin` (margin)                       Hadsell 2006
``debiased``              :class:`Debiased` (temperature, tau_plus)      Chuang 2020
``decoupled``             :class:`Decoupled` (temperature)               Yeh 2021
``hard-negative``/``hcl`` :class:`HardNegative` (temperature, tau_plus,  Robinson 2021
                          beta)
``supcon``                :class:`SupervisedContrastive` (temperature)   Khosla 2020
========================  =============================================  ======================
"""

from __future__ import annotations

import inspect
from typing import Any

from contrastkit.errors import ConfigError
from contrastkit.objectives.base import Objective, ShapeError, check_scores
from contrastkit.objectives.debiased import Debiased
from contrastkit.objectives.decoupled import Decoupled
from contrastkit.objectives.hard_negative import HardNegative
from contrastkit.objectives.infonce import InfoNCE, mutual_information_bound
from contrastkit.objectives.margin import Margin
from contrastkit.objectives.supcon import SupervisedContrastive
from contrastkit.objectives.triplet import Triplet

OBJECTIVES: dict[str, type[Objective]] = {
    "infonce": InfoNCE,
    "triplet": Triplet,
    "margin": Margin,
    "debiased": Debiased,
    "decoupled": Decoupled,
    "hard-negative": HardNegative,
    "hcl": HardNegative,
    "supcon": SupervisedContrastive,
}


def objective_parameters(cls: type[Objective]) -> list[str]:
    """The names of ``cls``'s constructor parameters, in order."""
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def build_objective(name: str, **params: Any) -> Objective:
    """Make an objective by name, passing it the parameters its constructor accepts.

    The trainers pass one common set of options to every objective (``temperature``, ``tau_plus``, ``beta``,
    ``margin``, ``mining``), so a parameter that *some* objective takes but this one does not is ignored, as
    is a value of ``None`` (the constructor's default is used). A name that *no* objective takes (a typo such
    as ``temprature``) is a :class:`~contrastkit.errors.ConfigError` naming the parameters this objective
    takes.
    """
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}") from None
    accepted = objective_parameters(cls)
    known = {n for c in OBJECTIVES.values() for n in objective_parameters(c)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for objective "
            f"{name!r}; it takes {', '.join(accepted) or 'no parameters'} "
            f"(parameters of any objective: {', '.join(sorted(known))})"
        )
    return cls(**{k: v for k, v in params.items() if k in accepted and v is not None})


__all__ = [
    "OBJECTIVES",
    "Debiased",
    "Decoupled",
    "HardNegative",
    "InfoNCE",
    "Margin",
    "Objective",
    "ShapeError",
    "SupervisedContrastive",
    "Triplet",
    "build_objective",
    "check_scores",
    "mutual_information_bound",
    "objective_parameters",
]
