"""The FID Inception-v3 (pool3, 2048 features), weight-compatible with pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID graph ported to PyTorch).

Nothing downloads at run time: the weights come from a local file given as ``weights=`` or by
the environment variable ``DIFFUSIONLAB_INCEPTION_WEIGHTS``. Obtain the file once on a machine
with network access, e.g. from pytorch-fid's release page
(github.com/mseitzer/pytorch-fid/releases, file pt_inception-2015-12-05-6726825d.pth), and copy it.

The network is torchvision's Inception3 layout with the FID graph's differences (as
pytorch-fid implements them): average pools in the A, C and first E blocks exclude padding
from the average, and the last E block uses a max pool in its pool branch. Preprocessing is
pytorch-fid's: images in [0, 1] (greyscale repeated to RGB), resized to 299 x 299 bilinearly
(``align_corners=False``, no antialiasing), then mapped to [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.paths import MissingPath
from ..errors import UserError

WEIGHTS_ENV = "DIFFUSIONLAB_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
HOW_TO_GET = (f"the FID Inception weights are not on this machine. Download {WEIGHTS_FILE} from "
              "https://github.com/mseitzer/pytorch-fid/releases on a machine with network access, copy it "
              f"here and pass its path (the weights argument, or ${WEIGHTS_ENV})")


class Conv(nn.Module):
    """Conv (no bias) + BatchNorm (eps 0.001) + ReLU: torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, kernel_size=1)
        self.branch5x5_1 = Conv(cin, 48, kernel_size=1)
        self.branch5x5_2 = Conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = Conv(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x))], 1)


class BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        h, v = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, kernel_size=1)
        self.branch7x7_1 = Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = Conv(c7, c7, **h)
        self.branch7x7_3 = Conv(c7, 192, **v)
        self.branch7x7dbl_1 = Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = Conv(c7, c7, **v)
        self.branch7x7dbl_3 = Conv(c7, c7, **h)
        self.branch7x7dbl_4 = Conv(c7, c7, **v)
        self.branch7x7dbl_5 = Conv(c7, 192, **h)
        self.branch_pool = Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, kernel_size=1)
        self.branch3x3_2 = Conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, kernel_size=1)
        self.branch3x3_1 = Conv(cin, 384, kernel_size=1)
        self.branch3x3_2a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = Conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """Images [N, C, H, W] in [0, 1] (C = 1 or 3) -> pool3 features [N, 2048]."""

    feature_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = Conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = Conv(80, 192, kernel_size=3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        if images.shape[1] != 3:
            raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for m in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = m(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(weights: str | os.PathLike | None = None) -> FIDInception:
    """The FID Inception with the pytorch-fid weights from ``weights`` or $DIFFUSIONLAB_INCEPTION_WEIGHTS,
    in eval mode; a clear FileNotFoundError (how to obtain the file) when absent."""
    path = weights or os.environ.get(WEIGHTS_ENV)
    if not path or not Path(path).is_file():
        raise MissingPath(HOW_TO_GET + (f" (looked for {path})" if path else ""), param="weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = FIDInception()
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    if missing:
        raise UserError(f"{path} is not the FID Inception state dict: {len(missing)} keys missing, e.g. {missing[:3]}",
                        param="weights")
    model.load_state_dict({k: state[k] for k in ours})
    return model.eval()
