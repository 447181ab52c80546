"""Front-ends and storage (layer L3): the seed API's ``GaussianDiffusion`` / ``ContinuousDiffusion``
on one base, the process config (``processes``), checkpoints and ``load_denoiser``."""
