"""Grad-CAM: hand-computed maps on a tiny net, equality with Captum and MONAI, thread safety."""

import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discovery.explain.methods import METHODS, OCCLUSION_WINDOW, explain, predict_and_explain
from discovery.model.card import ModelCard, build_network


class TinyNet(torch.nn.Module):
    """conv (1->2 channels, kernel 2, stride 2, hand-set) -> ReLU -> global mean -> linear."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv3d(1, 2, kernel_size=2, stride=2, bias=False)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0] = 1.0 / 8.0          # channel 0: mean of each 2x2x2 block
            self.features.weight[1] = 2.0 / 8.0          # channel 1: twice that
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0 / 4.0]]))
        self.cam_layer = "features"

    def forward(self, x):
        a = self.act(self.features(x))
        return self.fc(a.mean(dim=(2, 3, 4)))


def test_gradcam_hand_computed():
    # 4x4x4 input whose 2x2x2 block means are b[i,j,k] = 1 + i + 2j + 4k  (all positive)
    blocks = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) + 1.0
    x = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)[None, None]
    model = TinyNet().eval()
    # A_0 = b, A_1 = 2b;  logit_1 = mean(A_0) - mean(A_1)/4  =>  dlogit/dA_c = W[1,c] / 8
    # alpha_0 = 1/8, alpha_1 = -1/32;  cam = relu(b/8 - 2b/32) = b/16
    native = (blocks / 16.0)[None, None]
    expected = F.interpolate(native, size=(4, 4, 4), mode="trilinear", align_corners=False)[0, 0]
    got = explain(model, x, target=1)
    assert got.shape == (1, 4, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-7)
    # corners of a trilinear (align_corners=False) upsampling equal the native corners
    assert got[0, 0, 0, 0] == pytest.approx(1 / 16)
    assert got[0, -1, -1, -1] == pytest.approx(8 / 16)


def test_gradcam_relu_zeroes_negative_evidence():
    model = TinyNet().eval()
    x = torch.ones(1, 1, 4, 4, 4)
    # class 0 has zero weights: gradients are zero, the map is exactly zero (not rescaled)
    assert np.all(explain(model, x, target=0) == 0.0)


def _demo_net(seed=0):
    torch.manual_seed(seed)
    return build_network(ModelCard()).eval()


def test_equals_captum_layergradcam():
    from captum.attr import LayerAttribution, LayerGradCam

    model = _demo_net()
    x = torch.rand(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = explain(model, x, target=1)
    layer = dict(model.named_modules())[model.cam_layer]
    ref = LayerGradCam(model, layer).attribute(x, target=1, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (32, 32, 32), interpolate_mode="trilinear")
    np.testing.assert_allclose(ours, ref[:, 0].detach().numpy(), atol=1e-5, rtol=0)
    assert ours.max() > 0


def test_equals_monai_gradcam_raw_map():
    from monai.visualize import GradCAM

    model = _demo_net()
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = explain(model, x, target=1)
    # MONAI switches inplace off on the model it is given: hand it a copy.
    cam = GradCAM(copy.deepcopy(model), target_layers=model.cam_layer, postprocessing=lambda t: t)
    ref = cam(x, class_idx=1)
    np.testing.assert_allclose(ours, ref[:, 0].detach().numpy(), atol=1e-5, rtol=0)


def test_explain_leaves_model_untouched():
    model = _demo_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inplace_before = [m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    explain(model, torch.rand(1, 1, 32, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU)] == inplace_before
    assert not model.training
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())


def test_probabilities_match_plain_forward():
    model = _demo_net()
    x = torch.rand(2, 1, 32, 32, 32)
    probs, _, info = predict_and_explain(model, x)
    with torch.no_grad():
        ref = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert info.layer == model.cam_layer and info.target == 1
    assert all(n < 32 and 32 % n == 0 for n in info.native_shape)


def test_two_threads_share_one_model():
    model = _demo_net()
    gen = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 1, 32, 32, 32, generator=gen), torch.rand(2, 1, 32, 32, 32, generator=gen)
    seq_a, seq_b = explain(model, a), explain(model, b)
    out = {}
    barrier = threading.Barrier(2)

    def work(name, x):
        barrier.wait()
        for _ in range(3):
            out[name] = explain(model, x)

    threads = [threading.Thread(target=work, args=("a", a)), threading.Thread(target=work, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(out["a"], seq_a, atol=1e-6)
    np.testing.assert_allclose(out["b"], seq_b, atol=1e-6)


@pytest.mark.parametrize("bad", [torch.zeros(2, 32, 32, 32), torch.zeros(1, 2, 8, 8, 8),
                                 torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64)])
def test_rejects_malformed_input(bad):
    with pytest.raises(ValueError, match="rois must be"):
        explain(_demo_net(), bad)


def test_unknown_layer_and_method():
    with pytest.raises(ValueError, match="no module 'nope'"):
        explain(_demo_net(), torch.zeros(1, 1, 32, 32, 32), layer="nope")
    with pytest.raises(ValueError, match="unknown attribution method"):
        explain(_demo_net(), torch.zeros(1, 1, 32, 32, 32), method="magic")


# ------------------------------------------------------------------ the other methods


def _tiny_blocks():
    blocks = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) + 1.0
    x = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)[None, None]
    return blocks, x


@pytest.mark.parametrize("method, factor", [
    # gradients are uniform on TinyNet: g_0 = 1/8, g_1 = -1/32 at every native voxel
    ("hirescam", 1 / 16),   # relu(g_0 b + g_1 2b) = b/8 - b/16 = b/16 (equals Grad-CAM here)
    ("layercam", 1 / 8),    # relu(relu(g_0) b + relu(g_1) 2b) = b/8
    # Grad-CAM++, channel 0: alpha = g^2 / (2 g^2 + sum(A_0) g^3) = (1/64) / (2/64 + 36/512)
    # = 2/13; w_0 = sum over 8 voxels of alpha * relu(g_0) = 8 * 2/13 * 1/8 = 2/13.
    # Channel 1 has a negative gradient, so w_1 = 0.   Map: 2b/13.
    ("gradcam++", 2 / 13),
])
def test_cam_variants_hand_computed(method, factor):
    blocks, x = _tiny_blocks()
    native = (blocks * factor)[None, None]
    expected = F.interpolate(native, size=(4, 4, 4), mode="trilinear", align_corners=False)[0, 0]
    probs, got, info = predict_and_explain(TinyNet().eval(), x, method=method, target=1)
    np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-6)
    assert info.method == method and info.layer == "features" and info.native_shape == (2, 2, 2)
    assert not info.signed and info.upsampling == "trilinear"


def test_hirescam_equals_gradcam_before_global_pooling_and_differs_earlier():
    model = _demo_net()
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(4))
    # layer3 feeds global average pooling + a linear layer, so dY/dA is the same at every
    # position and HiResCAM reduces to Grad-CAM (both are then the original CAM).
    np.testing.assert_allclose(explain(model, x, method="hirescam"), explain(model, x), atol=1e-6)
    # on layer2 the gradient varies over space and the two differ
    g = explain(model, x, method="gradcam", layer="layer2")
    h = explain(model, x, method="hirescam", layer="layer2")
    assert g.shape == h.shape and h.min() >= 0
    assert not np.allclose(g, h)


def test_layercam_on_an_earlier_layer_is_finer():
    model = _demo_net()
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5))
    _, _, coarse = predict_and_explain(model, x, method="layercam")
    _, fine_map, fine = predict_and_explain(model, x, method="layercam", layer="layer1")
    assert np.prod(fine.native_shape) > np.prod(coarse.native_shape)
    assert fine.layer == "layer1" and fine_map.shape == (1, 32, 32, 32)


class BlockSum(torch.nn.Module):
    """logit_1 = sum of the input over the block [0:2, 0:2, 0:2]; logit_0 = 0."""

    def forward(self, x):
        s = x[:, 0, :2, :2, :2].sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_integrated_gradients_of_a_linear_model_is_input_times_weight():
    # For a linear score the IG path integral is exact: attribution = (x - 0) * d score / dx,
    # i.e. the input inside the block and 0 elsewhere, whatever the number of steps.
    x = torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    probs, got, info = predict_and_explain(BlockSum(), x, method="integrated_gradients")
    expected = np.zeros((2, 4, 4, 4), np.float32)
    expected[:, :2, :2, :2] = x[:, 0, :2, :2, :2].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert info.signed and info.layer == "input" and info.upsampling == "none"


def test_occlusion_credits_only_the_block(monkeypatch):
    import discovery.explain.methods as ex

    # window 2, stride 2 on a 4^3 ROI: the only window covering the block removes all of it,
    # so every block voxel gets the block's full sum and every other voxel gets 0.
    monkeypatch.setattr(ex, "OCCLUSION_WINDOW", 2)
    monkeypatch.setattr(ex, "OCCLUSION_STRIDE", 2)
    x = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    got = explain(BlockSum(), x, method="occlusion")
    expected = np.zeros((1, 4, 4, 4), np.float32)
    expected[0, :2, :2, :2] = float(x[0, 0, :2, :2, :2].sum())
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "layercam", "layercam-fused",
                                    "gradcam-refined", "integrated_gradients"])
def test_every_method_keeps_the_contract_and_the_model(method):
    model = _demo_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(8))
    got = explain(model, x, method=method)
    assert got.shape == (2, 32, 32, 32) and got.dtype == np.float32 and np.isfinite(got).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())
    assert not model.training


# ------------------------------------------------------------------ fused CAMs of two layers


class TwoLayerNet(torch.nn.Module):
    """fine: 1x1x1 conv, weight 1 (identity) -> ReLU -> coarse: 2^3 conv, stride 2, weights 1/8
    (block mean) -> ReLU -> global mean -> linear (class 1 weight 1, class 0 weight 0)."""

    def __init__(self):
        super().__init__()
        self.fine = torch.nn.Conv3d(1, 1, kernel_size=1, bias=False)
        self.coarse = torch.nn.Conv3d(1, 1, kernel_size=2, stride=2, bias=False)
        self.fc = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.fine.weight.fill_(1.0)
            self.coarse.weight.fill_(1.0 / 8.0)
            self.fc.weight.copy_(torch.tensor([[0.0], [1.0]]))
        self.cam_layer = "coarse"

    def forward(self, x):
        a = torch.relu(self.coarse(torch.relu(self.fine(x))))
        return self.fc(a.mean(dim=(2, 3, 4)))


def _two_layer_expected():
    """x > 0 on a 4^3 ROI.  Fine activation F = x (4^3); coarse C = b, the 2^3 block means.
    logit_1 = mean(C): dY/dC = 1/8 everywhere, dY/dF = (1/8) * (1/8) = 1/64 everywhere.
    LayerCAM fine = ReLU(1/64) * x = x/64 (native grid = ROI grid: no upsampling);
    Grad-CAM coarse = LayerCAM coarse = (1/8) b, upsampled trilinearly: U(b)/8."""
    x = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(11)) + 0.5
    b = F.avg_pool3d(x, 2)
    up = F.interpolate(b / 8, size=(4, 4, 4), mode="trilinear", align_corners=False)[0, 0]
    return x, (x[0, 0] / 64).numpy(), up.numpy()


def test_gradcam_refined_hand_computed():
    x, fine, coarse = _two_layer_expected()
    _, got, info = predict_and_explain(TwoLayerNet().eval(), x, method="gradcam-refined",
                                       layer="fine+coarse")
    # the geometric mean of the two raw maps, no normalisation
    np.testing.assert_allclose(got[0], np.sqrt(fine * coarse), rtol=1e-5)
    assert info.layer == "fine+coarse" and info.native_shape == (4, 4, 4) and not info.signed


def test_layercam_fused_hand_computed():
    x, fine, coarse = _two_layer_expected()
    _, got, info, act = predict_and_explain(TwoLayerNet().eval(), x, method="layercam-fused",
                                            layer="fine+coarse", return_activations=True)
    # Jiang et al. 2021: each map over its own per-ROI maximum, tanh(2 m), element-wise max
    expected = np.maximum(np.tanh(2 * fine / fine.max()), np.tanh(2 * coarse / coarse.max()))
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    assert got.max() <= np.tanh(2.0) + 1e-6
    assert info.method == "layercam-fused" and info.native_shape == (4, 4, 4)
    assert act.shape == (1, 1, 2, 2, 2)          # the coarse layer's activations


def test_fused_methods_need_two_layers():
    x, _, _ = _two_layer_expected()
    with pytest.raises(ValueError, match=r"layer='fine\+coarse'.*received 'coarse'"):
        explain(TwoLayerNet().eval(), x, method="layercam-fused", layer="coarse")
    with pytest.raises(ValueError, match="no module 'nope'"):
        explain(TwoLayerNet().eval(), x, method="gradcam-refined", layer="fine+nope")
    # the demo network's default: layer2 (16^3) and layer3 (8^3)
    _, maps, info = predict_and_explain(_demo_net(), torch.rand(1, 1, 32, 32, 32),
                                        method="layercam-fused")
    assert info.layer == "layer2+layer3" and info.native_shape == (16, 16, 16)
    assert maps.shape == (1, 32, 32, 32)


def test_every_method_explains_a_model_with_several_input_windows():
    """A model trained on several HU windows (``discovery train``'s default input) takes
    ``(N, C, z, y, x)``; every method gives one map per voxel.  IG sums a voxel's channels
    (completeness still holds); occlusion removes every channel of a voxel together."""
    from discovery.model.rois import HU_WINDOWS

    torch.manual_seed(5)
    card = ModelCard(roi_size_vox=(16, 16, 16)).with_windows(
        [HU_WINDOWS[k] for k in ("lung", "soft", "dense")])
    model = build_network(card).eval()
    x = torch.rand(2, 3, 16, 16, 16)
    for method in METHODS:
        probs, maps, info = predict_and_explain(model, x, method=method)
        assert maps.shape == (2, 16, 16, 16) and probs.shape == (2, 2), method
        assert np.isfinite(maps).all(), method
    _, ig, _ = predict_and_explain(model, x, method="integrated_gradients")
    with torch.no_grad():
        logit = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    tol = 2e-2 * float(logit.abs().max()) + 1e-3
    assert np.allclose(ig.reshape(2, -1).sum(1), logit.numpy(), atol=tol)
    _, occ, _ = predict_and_explain(model, x, method="occlusion")
    w = OCCLUSION_WINDOW
    blanked = x.clone()
    blanked[:, :, :w, :w, :w] = 0.0  # the first window, every channel
    with torch.no_grad():
        drop = (model(x)[:, 1] - model(blanked)[:, 1]).numpy()
    # a corner voxel lies in that window only: its value is the drop of the whole-voxel occlusion
    assert np.allclose(occ[:, 0, 0, 0], drop, atol=1e-5)


def test_rois_without_a_channel_axis_are_refused_with_the_shape():
    model = build_network(ModelCard(roi_size_vox=(16, 16, 16))).eval()
    with pytest.raises(ValueError, match=r"\(N, C, z, y, x\).*received shape \(2, 16, 16, 16\)"):
        predict_and_explain(model, torch.rand(2, 16, 16, 16))
