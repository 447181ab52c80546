from .unet import Unet

__all__ = ["Unet"]
