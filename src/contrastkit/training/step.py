"""One optimisation step of the training loop: two views of a batch, the learner's loss, the update.

:class:`TrainStep` owns what happens between two step boundaries: the views (their random parameters drawn
from the views' generator), the learner's forward pass under autocast, the backward pass, the optimizer
step, the momentum key encoder's update and the scheduler's step. With ``--skip-nonfinite`` a step whose
loss or gradient is not finite leaves no trace (see :meth:`TrainStep.__call__`). It returns the step's
statistics as 0-d tensors on the device, unread: the loop reads them only at its logging steps.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from contrastkit.errors import TrainingError
from contrastkit.negatives import MomentumEncoder
from contrastkit.negatives.distributed import world_size
from contrastkit.training.config import MAX_CONSECUTIVE_SKIPS
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.views import ImageViews


def all_finite(values: Tensor) -> bool:
    """Whether every value is finite on every rank (so that all ranks skip, or stop at, the same step)."""
    finite = torch.isfinite(values.detach()).all().float().reshape(1)
    if world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def grad_norm(learner: ContrastiveLearner) -> Tensor:
    """The gradients' total 2-norm (infinite or NaN if any gradient is), without clipping."""
    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def model_buffers(learner: ContrastiveLearner) -> dict[str, Tensor]:
    """Copies of the model's and key encoder's buffers (BatchNorm statistics), not the negative source's."""
    return {n: b.detach().clone() for n, b in learner.named_buffers() if not n.startswith("negatives.")}


def restore_buffers(learner: ContrastiveLearner, kept: dict[str, Tensor]) -> None:
    """Put back the buffers :func:`model_buffers` copied."""
    current = dict(learner.named_buffers())
    for name, value in kept.items():
        current[name].copy_(value)


def nonfinite_advice(amp_dtype: torch.dtype | None) -> str:
    """What to change after a diverged run: a lower learning rate or a higher temperature, and fp32 only for
    a run that was not already in fp32 (``amp_dtype`` None)."""
    options = ["a lower --lr", "a higher --temperature"] + (
        ["--precision fp32"] if amp_dtype is not None else []
    )
    return ", ".join(options[:-1]) + " or " + options[-1]


@dataclass
class TwoViews:
    """Two views of every image of a batch: one batch of 2B when both views are alike, else one B each.

    Sampling the views' random parameters stays eager (dynamo cannot trace an explicit generator); the pixel
    work (``render1``, ``render2``) is compiled when ``--compile`` is on.
    """

    views1: ImageViews
    views2: ImageViews
    generator: torch.Generator
    render1: Callable[..., Tensor]
    render2: Callable[..., Tensor]
    channels_last: bool

    @classmethod
    def create(
        cls,
        views1: ImageViews,
        views2: ImageViews,
        generator: torch.Generator,
        *,
        compile: bool,
        channels_last: bool,
    ) -> TwoViews:
        render1 = _compile(views1.render) if compile else views1.render
        render2 = render1 if views2 is views1 else _compile(views2.render) if compile else views2.render
        return cls(views1, views2, generator, render1, render2, channels_last)

    def __call__(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        gen = self.generator
        if self.views2 is self.views1:
            both = torch.cat([batch, batch], dim=0)
            v = self.render1(both, self.views1.sample(both, generator=gen))
        else:
            v = torch.cat(
                [
                    self.render1(batch, self.views1.sample(batch, generator=gen)),
                    self.render2(batch, self.views2.sample(batch, generator=gen)),
                ]
            )
        if self.channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        v1, v2 = v.chunk(2, dim=0)
        return v1, v2


def compile_model_only(negatives: str) -> bool:
    """Whether ``--compile`` compiles only the model for this ``--negatives`` source (see
    :func:`compile_learner`): mined negatives and MoCHi; every other source compiles the whole learner."""
    return "mined" in negatives or negatives.endswith("+mochi")


def compile_learner(learner: ContrastiveLearner, net: nn.Module, *, compile: bool, model_only: bool) -> Any:
    """What the step calls for the loss: the learner, compiled with ``--compile``.

    ``model_only``: only the model is compiled (it replaces ``learner.model``) and the learner stays eager.
    The trainer asks for it for sources that a compiled learner cannot hold still: the mined negatives'
    index search (faiss, numpy, Python loops), and MoCHi, whose step counter is an int attribute that dynamo
    takes as a constant. A compiled MoCHi learner recompiled at every step, then ran eager once it hit
    dynamo's recompile limit (8).
    """
    if compile and model_only:
        learner.model = _compile(net)
        return learner
    return _compile(learner) if compile else learner


def _compile(fn: Any) -> Any:
    """``torch.compile`` with the backend ``CONTRASTKIT_COMPILE_BACKEND`` names (default ``inductor``).

    The tests set ``aot_eager``: dynamo traces the whole step as under inductor, without generating kernels
    (45-65 s a run on the 2-core CPU), so a step that no longer traces fails in CI, not on the GPU.
    """
    return torch.compile(fn, backend=os.environ.get("CONTRASTKIT_COMPILE_BACKEND", "inductor"))


@dataclass
class TrainStep:
    """One optimisation step: views -> learner -> backward -> (skip?) -> optimizer, key encoder, scheduler.

    ``forward`` is the learner, or its compiled form (:func:`compile_learner`); ``model`` is the bare model
    the key encoder follows; ``labels`` are every training image's labels on the device (for the oracle and
    supervised objectives); ``last_good`` says where the latest checkpoint is (for the error that gives up).
    """

    learner: ContrastiveLearner
    forward: Any
    model: nn.Module
    key_encoder: MomentumEncoder | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    views: TwoViews
    labels: Tensor
    device: torch.device
    amp_dtype: torch.dtype | None
    skip_nonfinite: bool
    last_good: Callable[[], str]
    consecutive_skips: int = 0

    def __call__(self, idx: Tensor, batch: Tensor, number: int) -> tuple[dict[str, Tensor], bool]:
        """Step ``number`` (1-based) on the images ``batch`` at dataset indices ``idx``: its statistics
        (``loss``, ``mi_bound``, ``lr``, ``skipped`` and the negative source's) and whether it was skipped.

        ``--skip-nonfinite``: a skipped step must leave no trace. The learner leaves the negative source alone
        when the loss is not finite (``learner.finite_check``); the forward pass has still moved the BatchNorm
        statistics, so the model's and key encoder's buffers are kept to put back. A finite loss can still
        give an infinite gradient: that step is skipped too (its source update is done by then; only the
        weights are spared). A skipped step still steps the scheduler, on purpose; after
        ``MAX_CONSECUTIVE_SKIPS`` in a row the run has diverged and stops.
        """
        learner, optimizer = self.learner, self.optimizer
        before = model_buffers(learner) if self.skip_nonfinite else {}
        # in float32, outside autocast: under CUDA autocast the blur's conv2d would round pixels to bf16
        v1, v2 = self.views(batch)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            result = self.forward(v1, v2, self.labels[idx] if learner.uses_labels else None, indices=idx)
        optimizer.zero_grad(set_to_none=True)
        lr_used = optimizer.param_groups[0]["lr"]
        skip = self.skip_nonfinite and not all_finite(result.loss)
        if not skip:
            result.loss.backward()
            skip = self.skip_nonfinite and not all_finite(grad_norm(learner))
            if not skip:
                self.consecutive_skips = 0
                optimizer.step()
                if self.key_encoder is not None:
                    self.key_encoder.update(self.model)
        if skip:
            optimizer.zero_grad(set_to_none=True)
            restore_buffers(learner, before)
            self.consecutive_skips += 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise TrainingError(
                    f"the loss or its gradient was not finite for {self.consecutive_skips} steps in a row (up "
                    f"to step {number}); training has diverged. {self.last_good()} "
                    f"Start a new run with {nonfinite_advice(self.amp_dtype)}."
                )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        stats = {
            "loss": result.loss.detach(),
            **({"mi_bound": result.mi_bound} if result.mi_bound is not None else {}),  # InfoNCE only
            "lr": torch.full((), lr_used, device=self.device),
            "skipped": torch.full((), float(skip), device=self.device),
            **result.extra,
        }
        return stats, skip
