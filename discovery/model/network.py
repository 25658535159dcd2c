"""The tool's own network: MONAI's 3-D ResNet with its input standardisation and CAM layer.

Kept apart from :mod:`discovery.model.card` so that reading a card, or scoring with the
compiled copy of a model (:mod:`discovery.model.compiled`), does not import MONAI (about 2 s
and 270 MiB: its package initialiser imports all of its subpackages).
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet

from data_tools.errors import ModelError

__all__ = ["NoduleResNet"]


class NoduleResNet(ResNet):
    """MONAI's 3-D ResNet that also knows which layer its explanations use.

    ``cam_layer`` is read by :func:`discovery.explain.methods.explain` when no layer is given.
    ``stages`` < 4 ends the trunk early (the later stages become the identity and the
    classifier reads the last kept stage's channels), so that global pooling follows the
    Grad-CAM layer directly and that layer's receptive field stays small.  With all four
    stages every ``layer4`` unit sees the whole 48 mm ROI, and Grad-CAM maps of the trained
    model came out nearly uniform over the ROI (docs/guide/models.md#explanations-worth).

    Two experimental options keep the last stage's cells small while adding what a small
    receptive field lacks (docs/method/metrics-and-verdicts.md#calibrated); with either, the
    CAM layer is still pooled globally into ``fc``, so its class-contrast CAM decomposes the
    logit exactly:

    * ``context`` (channels, 0 = none): a coarse view of the whole ROI gives one gain per
      channel of the last stage, applied by the module ``gate`` (the CAM layer);
    * ``pointwise`` (layers, 0 = none): that many 1 x 1 x 1 convolutions (each doubling the
      channels) after the last stage, depth without a larger receptive field, in the module
      ``head`` (the CAM layer).
    """

    def __init__(self, *, cam_layer: str = "layer3", stages: int = 4, input_mean=None,
                 input_std=None, context: int = 0, pointwise: int = 0, **kwargs):
        super().__init__(**kwargs)
        # per-channel standardisation of the [0, 1] window channels, from the model card
        # (``architecture["input_mean"]``, ``["input_std"]``, set by ``train_model``); not
        # part of the weights file, so the card alone says what the network does to its input
        mean = std = None
        if (input_mean is None) != (input_std is None):
            raise ModelError("architecture needs both input_mean and input_std, or neither")
        if input_mean is not None:
            channels = int(kwargs.get("n_input_channels", 3))
            mean = torch.as_tensor(input_mean, dtype=torch.float32).reshape(-1)
            std = torch.as_tensor(input_std, dtype=torch.float32).reshape(-1)
            if mean.numel() != channels or std.numel() != channels or not bool((std > 0).all()):
                raise ModelError(f"input_mean and input_std need {channels} value(s) each (one "
                                 f"per input channel, std > 0); received {input_mean!r}, "
                                 f"{input_std!r}")
            shape = (1, channels) + (1,) * int(kwargs.get("spatial_dims", 3))
            mean, std = mean.reshape(shape), std.reshape(shape)
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)
        if stages not in (2, 3, 4):
            raise ModelError(f"stages must be 2, 3 or 4; received {stages}")
        self.cam_layer = cam_layer
        # channels of the last stage kept
        width = int(kwargs["block_inplanes"][stages - 1] * kwargs.get("widen_factor", 1.0))
        if stages < 4:
            for name in ("layer4", "layer3")[: 4 - stages]:
                setattr(self, name, torch.nn.Identity())
            self.fc = torch.nn.Linear(width, kwargs.get("num_classes", 400))
        self.context = self.gate = self.head = None
        if context:
            self.context = _Context(int(kwargs.get("n_input_channels", 3)), width, int(context))
            self.gate = _Gate()
        if pointwise:
            layers = []
            for _ in range(int(pointwise)):
                layers += [torch.nn.Conv3d(width, 2 * width, 1), torch.nn.BatchNorm3d(2 * width),
                           torch.nn.ReLU()]
                width *= 2
            self.head = torch.nn.Sequential(*layers)
            self.fc = torch.nn.Linear(width, kwargs.get("num_classes", 400))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        if self.context is None and self.head is None:
            return super().forward(x)
        h = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            h = self.maxpool(h)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        if self.gate is not None:
            h = self.gate(h, self.context(x))
        if self.head is not None:
            h = self.head(h)
        return self.fc(self.avgpool(h).flatten(1))


class _Context(torch.nn.Module):
    """A coarse view of the whole ROI (4^3 average pooling, two small convolutions, global
    pooling) turned into one gain per channel of the last stage, in (0, 2), 1 at
    initialisation: the context scales the local features; the classifier still sums them
    over the cells, so the map at ``gate`` remains the exact decomposition of the logit."""

    def __init__(self, channels: int, width: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.AvgPool3d(4), torch.nn.Conv3d(channels, hidden, 3, padding=1),
            torch.nn.ReLU(), torch.nn.Conv3d(hidden, hidden, 3, padding=1, stride=2),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
            torch.nn.Linear(hidden, width))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 + torch.tanh(self.net(x))


class _Gate(torch.nn.Module):
    """The last stage's features times the context's per-channel gain (the CAM layer of a
    network with context)."""

    def forward(self, h: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return h * gain[:, :, None, None, None]
