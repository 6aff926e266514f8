"""Training: the loop, its config, EMA, checkpoints."""

from .checkpoint import LoadedRun, export_model, latest_checkpoint, load, read_checkpoint, save_checkpoint
from .config import TrainConfig, apply_overrides, config_diff, load_config, save_config
from .ema import EMA
from .loss import DiffusionLoss, TrainBatch
from .consistency import ConsistencyDistillationLoss, ConsistencyTrainingLoss  # (registers loss: consistency)
from .progressive import ProgressiveDistillationLoss
from .hybrid import HybridLoss  # (registers loss: hybrid and loss: vlb)
from .autoencoder import AutoencoderLoss, train_autoencoder  # (registers loss: autoencoder)
from .trainer import Trainer, train
from .noisy_classifier import load_noisy_classifier, train_noisy_classifier

__all__ = [
    "EMA",
    "Trainer",
    "train",
    "TrainConfig",
    "load_config",
    "save_config",
    "apply_overrides",
    "config_diff",
    "TrainBatch",
    "DiffusionLoss",
    "ConsistencyTrainingLoss",
    "ConsistencyDistillationLoss",
    "ProgressiveDistillationLoss",
    "HybridLoss",
    "AutoencoderLoss",
    "train_autoencoder",
    "load",
    "LoadedRun",
    "save_checkpoint",
    "latest_checkpoint",
    "read_checkpoint",
    "export_model",
    "train_noisy_classifier",
    "load_noisy_classifier",
]
