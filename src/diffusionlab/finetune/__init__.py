"""Fine-tuning (layer L4): the home of LoRA (peft) and Diffusion-DPO, each a loss object for the
trainer (``Trainer(loss=...)``) over a loaded checkpoint. None is built yet."""
