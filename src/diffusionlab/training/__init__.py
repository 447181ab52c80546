from ..models.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from .config import PRESETS, DiffusionConfig, TrainConfig, UnetConfig, default_config, default_model, demo_config, demo_text_config, tiny_config
from .ema import EMA
from .trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "TrainConfig", "UnetConfig", "DiffusionConfig", "PRESETS",
           "demo_config", "demo_text_config", "tiny_config", "default_config", "default_model", "EMA", "save_checkpoint", "load_checkpoint", "find_checkpoint",
           "CheckpointError"]
