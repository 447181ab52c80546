"""Moved to ``diffusionlab.checkpoint`` (storage sits below the procedures); kept for one release."""
from ..models.checkpoint import (FORMAT_VERSION, CheckpointError, find_checkpoint, load_checkpoint,  # noqa: F401
                          read_config, resume_checkpoint, save_checkpoint, verify_checkpoint, write_json_atomic)
