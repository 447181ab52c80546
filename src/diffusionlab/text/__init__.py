"""Text conditioning's front end: prompts to conditions (``encoders``), their embedding cache
(``cache``) and the captions of the labelled digits (``captions``). The networks' side (context,
cross-attention, the small encoder's layers) is ``nn.text``."""
from .captions import (DIGIT_WORDS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption_ids, caption_table, digit_caption,
                       prompt_for)
from .encoders import (ENCODERS, MAX_PROMPT_CHARS, MiniLMEncoder, TextEncoder, check_fingerprint, check_prompts,
                       encoder_fingerprint, encoder_width, get_encoder)

__all__ = ["DIGIT_WORDS", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "caption_table", "caption_ids", "digit_caption",
           "prompt_for", "ENCODERS", "MAX_PROMPT_CHARS", "MiniLMEncoder", "TextEncoder", "check_prompts",
           "encoder_width", "get_encoder", "encoder_fingerprint", "check_fingerprint"]
