"""Pipelines over a trained denoiser (layer L4), each one function over ``core.sampling``
(docs/ARCHITECTURE.md, "How to add a pipeline"): ``conditioning.conditioned`` (the flags of
text-to-image and class sampling -> guided denoiser + condition), ``inputs`` (the ``--input`` of
every pipeline), ``img2img`` (SDEdit), ``inpaint`` (RePaint + reconstruction guidance) and
``upscale`` (SR3 super-resolution)."""
