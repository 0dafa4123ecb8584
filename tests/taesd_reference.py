"""A PyTorch TAESD (with the FLUX.2 mid-block branch) for the reference round trip. Tests only."""

import torch
from torch import nn


def _conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, c, branch):
        super().__init__()
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.pool = (nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.GroupNorm(4, 4 * c), nn.ReLU(),
                                   nn.Conv2d(4 * c, c, 1, bias=False)) if branch else None)

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


def encoder(latent, branch):
    b = lambda deep=False: _Block(64, branch and deep)  # noqa: E731
    return nn.Sequential(_conv(3, 64), b(), _conv(64, 64, stride=2, bias=False), b(), b(), b(),
                         _conv(64, 64, stride=2, bias=False), b(), b(), b(),
                         _conv(64, 64, stride=2, bias=False), b(True), b(True), b(True), _conv(64, latent))


def decoder(latent, branch):
    b = lambda deep=False: _Block(64, branch and deep)  # noqa: E731
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731
    return nn.Sequential(_Clamp(), _conv(latent, 64), nn.ReLU(), b(True), b(True), b(True), up(),
                         _conv(64, 64, bias=False), b(), b(), b(), up(), _conv(64, 64, bias=False), b(), b(), b(),
                         up(), _conv(64, 64, bias=False), b(), _conv(64, 3))


def load(path_enc, path_dec):
    from safetensors.torch import load_file

    se, sd = load_file(str(path_enc)), load_file(str(path_dec))
    branch = any(".pool." in k for k in sd)
    enc, dec = encoder(sd["1.weight"].shape[1], branch), decoder(sd["1.weight"].shape[1], branch)
    enc.load_state_dict({k: v.float() for k, v in se.items()})
    dec.load_state_dict({k: v.float() for k, v in sd.items()})
    return enc.eval(), dec.eval()
