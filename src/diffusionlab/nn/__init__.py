"""Networks. Each has its dataclass config beside it (``Unet`` / ``UnetConfig``), is built with
``from_config``, and is named in ``NETWORKS`` (the one registry the CLI, the trainer and the
checkpoint loader use), so a new backbone (``--arch dit``) is one module plus one entry."""
from .dit import DiT, DiTConfig, dit_demo_model
from .unet import Unet, UnetConfig

NETWORKS: dict = {"unet": Unet, "dit": DiT}   # arch -> class with .Config (a dataclass) and .from_config


def network_class(arch: str):
    if arch not in NETWORKS:
        raise ValueError(f"unknown network {arch!r}; choose from {', '.join(NETWORKS)}")
    return NETWORKS[arch]


def network_config(arch: str, d: dict):
    """The arch's config dataclass from a stored dict."""
    return network_class(arch).Config.from_dict(d)


def build_network(arch: str, config):
    """``NETWORKS[arch].from_config(config)``; ``config`` is the dataclass or its dict."""
    cls = network_class(arch)
    return cls.from_config(config if isinstance(config, cls.Config) else network_config(arch, config))


__all__ = ["Unet", "UnetConfig", "DiT", "DiTConfig", "dit_demo_model", "NETWORKS", "build_network", "network_config", "network_class"]
