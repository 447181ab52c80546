"""The math core (layers L0-L1 of docs/ARCHITECTURE.md): randomness, the condition type,
schedules, the DDPM process and its closed forms, SDEs, devices, the denoiser protocol and the
preconditioned denoisers, the one training loss, guidance wrappers, the samplers, ``sample`` and
the likelihoods. Torch only; no file formats, no networks, no front-ends."""
