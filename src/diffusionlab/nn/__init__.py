"""Networks. Each has its dataclass config beside it (``Unet`` / ``UnetConfig``), is built with
``from_config``, and is named in ``NETWORKS`` (the one registry the CLI, the trainer and the
checkpoint loader use), so a new backbone (``--arch dit``) is one module plus one entry.

``CLASSIFIERS`` and ``AUTOENCODERS`` name the networks that are not denoisers: the noise-aware
classifier of classifier guidance and latent diffusion's KL autoencoder, which the trainer builds
from the same kind of config (``TrainConfig.arch``, ``TrainConfig.model``) when
``TrainConfig.classifier`` / ``TrainConfig.autoencoder`` selects that task. They are kept out of
``NETWORKS`` so that nothing offers them as a diffusion backbone (``train --arch``)."""
from .autoencoder import Autoencoder, AutoencoderConfig
from .classifier import NoisyClassifier, NoisyClassifierConfig
from .dit import DiT, DiTConfig, dit_demo_model
from .unet import Unet, UnetConfig

NETWORKS: dict = {"unet": Unet, "dit": DiT}   # arch -> class with .Config (a dataclass) and .from_config
CLASSIFIERS: dict = {"classifier": NoisyClassifier}  # the same protocol; trained by training.classifier
AUTOENCODERS: dict = {"autoencoder": Autoencoder}    # latent diffusion's first stage; training.autoencoder


def network_class(arch: str):
    cls = NETWORKS.get(arch) or CLASSIFIERS.get(arch) or AUTOENCODERS.get(arch)
    if cls is None:
        raise ValueError(f"unknown network {arch!r}; choose from {', '.join([*NETWORKS, *CLASSIFIERS, *AUTOENCODERS])}")
    return cls


def network_config(arch: str, d: dict):
    """The arch's config dataclass from a stored dict."""
    return network_class(arch).Config.from_dict(d)


def build_network(arch: str, config):
    """``NETWORKS[arch].from_config(config)``; ``config`` is the dataclass or its dict."""
    cls = network_class(arch)
    return cls.from_config(config if isinstance(config, cls.Config) else network_config(arch, config))


__all__ = ["Unet", "UnetConfig", "DiT", "DiTConfig", "dit_demo_model", "NoisyClassifier", "NoisyClassifierConfig",
           "Autoencoder", "AutoencoderConfig", "AUTOENCODERS", "NETWORKS", "CLASSIFIERS", "build_network", "network_config", "network_class"]
