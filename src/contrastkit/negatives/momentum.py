"""A momentum (EMA) copy of the model that produces keys, and MoCo's shuffling BN.

He, Fan, Wu, Xie, Girshick 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"
(CVPR 2020; arXiv 1911.05722):

* Sec. 3.2, Eq. (2), momentum update: the key encoder's parameters follow the query encoder's,
  ``θ_k ← m θ_k + (1 − m) θ_q``, with only θ_q trained by back-propagation. MoCo uses m = 0.999 on
  ImageNet (the default of the official code, facebookresearch/moco): a slowly evolving key encoder keeps
  the queue's keys consistent. The paper's Sec. 4.1 "Ablation: momentum" (K = 4096, linear top-1):
  m = 0 fails ("the training loss oscillates and fails to converge"), 0.9 gives 55.2%, 0.99 57.8%,
  0.999 59.0%, 0.9999 58.9%. For short
  CIFAR-scale runs (hundreds of epochs of a few hundred steps) the common choice is m = 0.99, our default.
* Sec. 3.3, "Shuffling BN": with BatchNorm, a query and its positive key computed in the same batch can
  "cheat" through the batch statistics. MoCo computes BN per GPU and shuffles the key mini-batch across
  GPUs before the key encoder (un-shuffling afterwards), so a query and its key see statistics of
  different subsets. On one process, :func:`shuffle_bn_forward` emulates it: permute the key batch, run
  the key encoder on G groups separately (BN statistics per group, like per-GPU BN) and restore the
  order. Across GPUs one instead converts the models to synchronised BN
  (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``), the "global BN" of SimCLR (Chen et al. 2020,
  ICML 2020, arXiv 2002.05709, Sec. 2.2; not re-read in the check below), whose statistics over the whole
  global batch leak nothing useful.

:func:`cosine_momentum` is BYOL's schedule (Grill et al. 2020, "Bootstrap Your Own Latent", NeurIPS 2020,
arXiv 2006.07733, the implementation details of Sec. 3): ``τ_k = 1 − (1 − τ_base) (cos(π k / K) + 1) / 2``,
rising from τ_base to 1.

Citation check. Verified against the authors' code: the update ``param_k * m + param_q * (1 − m)``, the
key batch shuffled across GPUs before the key encoder and un-shuffled after it, the query batch not
shuffled (facebookresearch/moco ``moco/builder.py``), and BYOL's schedule ``1 − (1 − base_ema) ·
0.5 (1 + cos(π k / K))`` with k clipped at K (google-deepmind/deepmind-research
``byol/utils/schedules.py``, ``target_ema``), which :func:`cosine_momentum` computes. The label
"Eqn.(1)" for the InfoNCE loss appears in the paper's own Algorithm 1 (as quoted), and a transcription of
the paper numbers the momentum update (2). Eq. (2) in Sec. 3.2 was since read in text transcriptions of
the MoCo paper kept in public repositories ("The momentum update in Eqn.(2) makes θ_k evolve more
smoothly than θ_q"). Eq. (1) (Sec. 3.1), Eq. (2) (Sec. 3.2, "Momentum update"), Shuffling BN (Sec. 3.3,
"Pretext Task", paragraph "Shuffling BN") and the Sec. 4.1 ablation were read in a full-text transcription
of the paper (2026-12-02); BYOL's section was not re-read.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's cosine momentum schedule, from ``base`` at step 0 to ``final`` at ``total_steps``.

    ``m(k) = final − (final − base) (cos(π k / K) + 1) / 2`` (BYOL uses base 0.996, final 1; with final 1 this
    is the official ``target_ema``). Steps past ``total_steps`` stay at ``final``.
    """
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1) / 2


def shuffle_batch(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Randomly permute the rows of ``x``; returns ``(x[perm], perm)``."""
    device = generator.device if generator is not None else x.device
    perm = torch.randperm(x.shape[0], generator=generator, device=device).to(x.device)
    return x[perm], perm


def unshuffle_batch(y: Tensor, perm: Tensor) -> Tensor:
    """Undo :func:`shuffle_batch`: row ``i`` of ``y`` came from row ``perm[i]`` of the input."""
    out = torch.empty_like(y)
    out[perm] = y
    return out


def grouped_forward(model: nn.Module, x: Tensor, groups: int) -> Tensor:
    """Run ``model`` on ``groups`` consecutive, nearly equal chunks of ``x`` and concatenate the outputs.

    In training mode every chunk gets its own BatchNorm statistics (as if each were on its own GPU). Note
    that BN running statistics are then updated once per group.
    """
    if not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"groups must be a positive integer, got {groups!r}")
    if groups > x.shape[0]:
        raise ConfigError(f"cannot split a batch of {x.shape[0]} into {groups} groups")
    if groups == 1:
        return model(x)
    return torch.cat([model(chunk) for chunk in x.tensor_split(groups)], dim=0)


def shuffle_bn_forward(
    model: nn.Module, x: Tensor, groups: int, generator: torch.Generator | None = None
) -> Tensor:
    """MoCo's shuffling BN on one process: shuffle, run in ``groups`` groups, un-shuffle.

    The output rows correspond to the rows of ``x``. To mirror MoCo exactly, compute the queries in the
    same number of (unshuffled) groups with :func:`grouped_forward`.
    """
    xs, perm = shuffle_batch(x, generator)
    return unshuffle_batch(grouped_forward(model, xs, groups), perm)


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper


class MomentumEncoder(nn.Module):
    """EMA copy of a model (encoder + head) that produces keys; never trained by gradients.

    Args:
        model: the online (query) model; it is deep-copied at construction.
        momentum: m in ``θ_k ← m θ_k + (1 − m) θ_q``; 0.99 by default (MoCo's ImageNet value is 0.999).
        copy_buffers: copy the online model's buffers (BN running statistics, ``num_batches_tracked``) at
            every :meth:`update`. False keeps the key model's own buffers, updated by its own forward
            passes in training mode (MoCo's code does this).
        shuffle_groups: G > 1 applies :func:`shuffle_bn_forward` with G groups in training mode.
        generator: optional ``torch.Generator`` for the shuffle's permutations (default: the global one).

    ``forward`` runs under ``torch.no_grad()`` and returns keys without graph. The key model's parameters
    have ``requires_grad=False``, so optimizers built over a module that contains this one skip them; they
    are still in ``state_dict`` (checkpoints restore the key encoder).
    """

    def __init__(
        self,
        model: nn.Module,
        momentum: float = 0.99,
        *,
        copy_buffers: bool = True,
        shuffle_groups: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"momentum must lie in [0, 1], got {momentum!r}")
        if not isinstance(shuffle_groups, int) or shuffle_groups < 1:
            raise ConfigError(f"shuffle_groups must be a positive integer, got {shuffle_groups!r}")
        self.model = copy.deepcopy(_unwrap(model))
        self.model.requires_grad_(False)
        self.momentum = float(momentum)
        self.copy_buffers = copy_buffers
        self.shuffle_groups = shuffle_groups
        self.generator = generator

    @torch.no_grad()
    def update(self, online_model: nn.Module, momentum: float | None = None) -> None:
        """``θ_k ← m θ_k + (1 − m) θ_q`` for every parameter (MoCo Eq. 2); copy buffers if configured.

        Call it once per step, after the optimizer step (or before computing keys, which is the same).
        ``momentum`` overrides the configured m for this call (e.g. from :func:`cosine_momentum`).
        """
        m = self.momentum if momentum is None else float(momentum)
        online = _unwrap(online_model)
        key_params = dict(self.model.named_parameters())
        online_params = dict(online.named_parameters())
        if key_params.keys() != online_params.keys():
            raise ConfigError("the online model's parameters do not match the momentum encoder's")
        names = list(key_params)
        misfit = [n for n in names if key_params[n].shape != online_params[n].shape]
        if misfit:
            n = misfit[0]
            raise ConfigError(
                f"the online model's parameter {n!r} has shape {tuple(online_params[n].shape)}, the momentum "
                f"encoder's {tuple(key_params[n].shape)} ({len(misfit)} such parameters): build the momentum "
                "encoder from the model it follows"
            )
        theta_k = [key_params[n] for n in names]
        theta_q = [online_params[n].detach().to(key_params[n].dtype) for n in names]
        if theta_k:
            torch._foreach_mul_(theta_k, m)
            torch._foreach_add_(theta_k, theta_q, alpha=1.0 - m)
        if self.copy_buffers:
            online_buffers = dict(online.named_buffers())
            for name, buf in self.model.named_buffers():
                if name not in online_buffers:
                    raise ConfigError(f"the online model has no buffer {name!r}")
                buf.copy_(online_buffers[name])

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.training and self.shuffle_groups > 1:
                return shuffle_bn_forward(self.model, x, self.shuffle_groups, self.generator)
            return self.model(x)

    def extra_repr(self) -> str:
        return (
            f"momentum={self.momentum}, copy_buffers={self.copy_buffers}, "
            f"shuffle_groups={self.shuffle_groups}"
        )
