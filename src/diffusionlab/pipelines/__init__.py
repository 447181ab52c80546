"""Pipelines over a trained denoiser (layer L4): the home of text-to-image, img2img (SDEdit),
inpainting (RePaint) and super-resolution, each one function over ``core.sampling``
(docs/ARCHITECTURE.md, "How to add a pipeline"). None is built yet."""
