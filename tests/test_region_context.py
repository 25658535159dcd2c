"""Deep features pooled inside a region, and the layer activations they come from."""

import numpy as np
import pytest
import torch

from discovery.explain.methods import layer_activations
from discovery.pipeline import pool_region_features
from discovery.model.rois import Roi


def _roi(size=4, scale=1.0, offset=0.0):
    return Roi(hu=np.zeros((size,) * 3, np.float32), offset_zyx=np.full(3, offset),
               scale_zyx=np.full(3, scale), affine=np.eye(4))


def test_pool_region_features_hand_computed():
    # 2 channels on a 2x2x2 grid over a 4^3 ROI: each cell covers 2 ROI voxels per axis.
    act = np.zeros((2, 2, 2, 2), np.float32)
    act[0] = np.arange(8).reshape(2, 2, 2)
    act[1] = 10.0
    roi = _roi()
    # three voxels in cell (0,0,0) and one in cell (1,1,1): mean = (3*0 + 7) / 4
    pts = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [3, 3, 3]])
    np.testing.assert_allclose(pool_region_features(act, pts, roi), [7 / 4, 10.0])
    # scan coordinates are mapped through the ROI's offset and scale (2 scan voxels per ROI voxel)
    roi2 = _roi(scale=0.5, offset=10.0)
    np.testing.assert_allclose(pool_region_features(act, np.array([[10.0, 10.0, 10.0]]), roi2), [0, 10])
    np.testing.assert_allclose(pool_region_features(act, np.array([[11.9, 11.9, 11.9]]), roi2), [7, 10])
    # outside the ROI: clipped to the nearest cell; no voxel: zeros
    np.testing.assert_allclose(pool_region_features(act, np.array([[-5, -5, -5]]), roi), [0, 10])
    np.testing.assert_array_equal(pool_region_features(act, np.zeros((0, 3)), roi), [0, 0])
    with pytest.raises(ValueError, match="C, d, h, w"):
        pool_region_features(act[0], pts, roi)


class Tiny(torch.nn.Module):
    cam_layer = "conv"

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -2.0]).view(2, 1, 1, 1, 1)
        self.fc = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3, 4)))


def test_layer_activations_are_the_layer_output():
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 2, 2, 2)
    act = layer_activations(Tiny().eval(), x)
    assert act.shape == (1, 2, 2, 2, 2)
    np.testing.assert_allclose(act[0, 0], x[0, 0].numpy())
    np.testing.assert_allclose(act[0, 1], -2 * x[0, 0].numpy())
    with pytest.raises(ValueError, match="no module"):
        layer_activations(Tiny(), x, layer="nope")
