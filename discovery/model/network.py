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
    """

    def __init__(self, *, cam_layer: str = "layer3", stages: int = 4, input_mean=None,
                 input_std=None, **kwargs):
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
        if stages < 4:
            width = int(kwargs["block_inplanes"][stages - 1] * kwargs.get("widen_factor", 1.0))
            for name in ("layer4", "layer3")[: 4 - stages]:
                setattr(self, name, torch.nn.Identity())
            self.fc = torch.nn.Linear(width, kwargs.get("num_classes", 400))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return super().forward(x)
