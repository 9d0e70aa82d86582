"""A small 2-D CNN on log-mel spectrograms, for short speech clips (8 kHz, 0.1-2.3 s).

Input ``(B, 1, n_mels, frames)`` (e.g. 40 mels x 101 frames for 1 s at a 10 ms hop). Four stages of
conv3x3-BN-ReLU (widths ``w, 2w, 4w, 4w``), 2x2 max-pooling after each of the first three (``ceil_mode``,
so even a 0.1 s clip of 11 frames keeps at least one frame), then global average pooling over frequency
and time: any clip length gives a ``feature_dim = 4w`` vector. Plugs into
``ContrastiveModel(AudioCNN(), ProjectionHead(AudioCNN().feature_dim, ...))``.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit.errors import ConfigError

__all__ = ["AudioCNN"]


class AudioCNN(nn.Module):
    """Log-mel CNN: ``(B, in_channels, F, T)`` -> ``(B, feature_dim)`` with ``feature_dim = 4 * width``."""

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        widths = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(prev, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            prev = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.in_channels = in_channels
        self.feature_dim: int = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"AudioCNN expects log-mel spectrograms (B, {self.in_channels}, n_mels, frames), got "
                f"{tuple(x.shape)}; compute them with contrastkit.views.audio.LogMel (or AudioViews)"
            )
        return self.pool(self.features(x)).flatten(1)
