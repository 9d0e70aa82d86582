"""Training: configuration, the assembled spine, optimisers, the loop, checkpoints."""

from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.config import TrainConfig, load_config_file
from contrastkit.training.evaluate import evaluate_checkpoint
from contrastkit.training.learner import ContrastiveLearner, StepOutput
from contrastkit.training.optim import LARS, build_optimizer, warmup_cosine
from contrastkit.training.trainer import TrainResult, build_model, build_views, train

__all__ = [
    "LARS",
    "ContrastiveLearner",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "build_views",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config_file",
    "save_checkpoint",
    "train",
    "warmup_cosine",
]
