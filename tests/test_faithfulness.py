"""Faithfulness checks: deletion/insertion curves, ROAD (noisy linear imputation, MoRF/LeRF gap)
and its pass rule on hand-set models, parameter randomisation."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from discovery.explain.faithfulness import perturbation_curves, randomization_test, road_curves
from discovery.explain.faithfulness_rule import faithfulness_verdict, faithfulness_warning
from discovery.explain.imputation import linear_imputation, noisy_linear_imputation
from discovery.model.card import ModelCard, build_network, default_architecture

torch.set_num_threads(1)


class VoxelWeightNet(torch.nn.Module):
    """logit_0 = c, logit_1 = sum_v w_v x_v: a Conv3d whose fixed kernel covers the whole ROI.

    With these logits p_1 = softmax(...)_1 = sigmoid(sum_v w_v x_v - c), so every point of a
    deletion or insertion curve can be worked out by hand.
    """

    def __init__(self, weights, c=0.0):
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float32)
        self.conv = torch.nn.Conv3d(1, 1, kernel_size=tuple(weights.shape), bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(weights[None, None])
        self.c = float(c)
        self.cam_layer = "conv"

    def forward(self, x):
        s = self.conv(x).flatten(1)
        return torch.cat([torch.full_like(s, self.c), s], dim=1)


class TinyCamNet(torch.nn.Module):
    """conv (1->2, kernel 2, stride 2; channel 1 = 2 x channel 0) -> ReLU -> mean -> fc.

    ``aux`` owns parameters but is never used in ``forward``.
    """

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv3d(1, 2, kernel_size=2, stride=2, bias=False)
        self.fc = torch.nn.Linear(2, 2, bias=False)
        self.aux = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.features.weight[0] = 1.0 / 8.0
            self.features.weight[1] = 2.0 / 8.0
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0 / 4.0]]))
        self.cam_layer = "features"

    def forward(self, x):
        return self.fc(torch.relu(self.features(x)).mean(dim=(2, 3, 4)))


def _sigmoid(s):
    return 1.0 / (1.0 + math.exp(-s))


def _trapezoid(ys, dx):
    return dx * (sum(ys) - (ys[0] + ys[-1]) / 2)


# -- deletion / insertion ----------------------------------------------------------------------

def test_hand_computed_curves_on_2x2x2_roi():
    w = np.arange(8, dtype=np.float32).reshape(2, 2, 2) / 4   # 0, .25, ..., 1.75 (exact in binary)
    model = VoxelWeightNet(w).eval()
    x = torch.ones(1, 1, 2, 2, 2)
    res = perturbation_curves(model, x, w[None], baseline=0.0, steps=8, n_random=2)
    # steps = 8 = V: one voxel per step, in decreasing weight 1.75, 1.5, ..., 0.25, 0.
    # Deletion: logit_1 = sum of the weights still present:
    #   7, 7-1.75=5.25, 5.25-1.5=3.75, 2.5, 1.5, 0.75, 0.25, 0, 0
    # Insertion: logit_1 = sum of the weights revealed: 0, 1.75, 3.25, 4.5, 5.5, 6.25, 6.75, 7, 7
    dele = [_sigmoid(s) for s in (7, 5.25, 3.75, 2.5, 1.5, 0.75, 0.25, 0, 0)]
    ins = [_sigmoid(s) for s in (0, 1.75, 3.25, 4.5, 5.5, 6.25, 6.75, 7, 7)]
    np.testing.assert_allclose(res.fractions, np.arange(9) / 8)
    np.testing.assert_allclose(res.deletion[0], dele, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.insertion[0], ins, rtol=0, atol=1e-12)
    # trapezoid over [0, 1] with width 1/8: (1/8) * (sum - (first + last) / 2)
    assert res.deletion_auc[0] == pytest.approx(_trapezoid(dele, 1 / 8), abs=1e-12)
    assert res.insertion_auc[0] == pytest.approx(_trapezoid(ins, 1 / 8), abs=1e-12)
    # every order starts from the full ROI and ends at the baseline
    assert res.deletion_random[0, 0] == pytest.approx(dele[0]) and res.deletion_random[0, -1] == 0.5
    assert res.beats_random()[0]
    # the best possible order: no random order deletes faster
    assert res.deletion_auc[0] <= res.deletion_auc_random[0] + 1e-12
    # a scalar baseline and the same value as an array give the same curves
    arr = perturbation_curves(model, x, w[None], baseline=np.zeros((2, 2, 2)), steps=8, n_random=2)
    np.testing.assert_array_equal(arr.deletion, res.deletion)
    with pytest.raises(ValueError):
        res.deletion[0, 0] = 1.0                               # results are read-only


def _block_setup():
    mask = np.zeros((8, 8, 8), np.float32)
    mask[2:4, 5:7, 1:3] = 1.0                                  # 8 voxels of 512
    model = VoxelWeightNet(mask, c=4.0).eval()                 # p_1 = sigmoid(sum_block x - 4)
    return mask, model, torch.ones(2, 1, 8, 8, 8)


def test_map_on_the_evidence_beats_random_and_its_inverse_does_not():
    mask, model, x = _block_setup()
    maps = np.stack([mask, 1.0 - mask])                        # on the block / everywhere else
    calls = []
    res = perturbation_curves(model, x, maps, baseline=0.0, steps=16, n_random=3,
                              progress=lambda d, t: calls.append((d, t)))
    # 32 voxels per step: the first deletion step removes the whole block -> sigmoid(-4)
    assert res.deletion[0, 0] == pytest.approx(_sigmoid(4))
    assert res.deletion[0, 1] == pytest.approx(_sigmoid(-4))
    assert res.insertion[0, 1] == pytest.approx(_sigmoid(4))
    # the inverse map removes the block last
    assert res.deletion[1, 15] == pytest.approx(_sigmoid(4))
    assert res.deletion[1, 16] == pytest.approx(_sigmoid(-4))
    np.testing.assert_array_equal(res.beats_random(), [True, False])
    assert res.deletion_auc[0] < res.deletion_auc_random[0] < res.deletion_auc[1]
    assert res.insertion_auc[0] > res.insertion_auc_random[0] > res.insertion_auc[1]
    total = 2 * (1 + 3) * 2 * 17
    assert calls[-1] == (total, total) and len(calls) == math.ceil(total / 32)


def test_batch_size_does_not_change_results_and_model_is_untouched():
    _, model, x = _block_setup()
    maps = np.random.default_rng(0).random((2, 8, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = perturbation_curves(model, x, maps, baseline=0.1, steps=4, n_random=1, batch_size=1)
    b = perturbation_curves(model, x, torch.as_tensor(maps), baseline=0.1, steps=4, n_random=1,
                            batch_size=7)
    np.testing.assert_allclose(a.deletion, b.deletion, atol=1e-7)
    np.testing.assert_allclose(a.insertion_random, b.insertion_random, atol=1e-7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_ties_broken_randomly_reproducibly_not_in_c_order():
    w = np.zeros((4, 4, 4), np.float32)
    w[0, 0, 0] = 1.0                                   # only the first voxel in C order matters
    model = VoxelWeightNet(w).eval()
    x = torch.ones(6, 1, 4, 4, 4)
    flat = np.zeros((6, 4, 4, 4))                              # all-tied map
    kw = {"baseline": 0.0, "steps": 64, "n_random": 0}

    def drop_steps(res):                                       # step at which voxel (0,0,0) went
        return [int(np.argmax(curve < 0.6)) for curve in res.deletion]

    res = perturbation_curves(model, x, flat, seed=1, **kw)
    again = perturbation_curves(model, x, flat, seed=1, **kw)
    np.testing.assert_array_equal(res.deletion, again.deletion)
    steps = drop_steps(res)
    assert steps != [1] * 6                                    # C order would remove it first
    assert len(set(steps)) > 1                                 # each ROI its own tie order
    assert drop_steps(perturbation_curves(model, x, flat, seed=2, **kw)) != steps
    # a ROI's order depends on (seed, ROI index), not on the other ROIs in the call
    alone = perturbation_curves(model, x[:1], flat[:1], seed=1, **kw)
    np.testing.assert_array_equal(alone.deletion[0], res.deletion[0])
    # without a random control the random fields are NaN and never "beaten"
    assert np.isnan(res.deletion_auc_random).all() and not res.beats_random().any()


@pytest.mark.parametrize("rois, maps, kwargs, match", [
    (torch.ones(2, 1, 4, 4, 4), np.zeros((2, 4, 4, 5)), {}, r"received \(2, 4, 4, 5\)"),
    (torch.ones(2, 1, 4, 4, 4), np.zeros((1, 4, 4, 4)), {}, r"received \(1, 4, 4, 4\)"),
    (torch.ones(2, 4, 4, 4), np.zeros((2, 4, 4, 4)), {}, "rois must be"),
    (torch.ones(1, 1, 4, 4, 4), np.zeros((1, 4, 4, 4)), {"baseline": np.zeros(3)}, "broadcastable"),
    (torch.ones(1, 1, 4, 4, 4), np.zeros((1, 4, 4, 4)), {"steps": 0}, "steps must be"),
    (torch.ones(1, 1, 4, 4, 4), np.full((1, 4, 4, 4), np.nan), {}, "finite"),
    (torch.ones(1, 1, 4, 4, 4), np.zeros((1, 4, 4, 4)), {"target": 2}, "target 2 is out of range"),
])
def test_perturbation_rejects_bad_input(rois, maps, kwargs, match):
    model = VoxelWeightNet(np.ones((4, 4, 4))).eval()
    with pytest.raises(ValueError, match=match):
        perturbation_curves(model, rois, maps, **{"baseline": 0.0, **kwargs})


def test_models_in_training_mode_are_rejected():
    model = VoxelWeightNet(np.ones((4, 4, 4))).train()
    x = torch.ones(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        perturbation_curves(model, x, np.zeros((1, 4, 4, 4)), baseline=0.0)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        randomization_test(TinyCamNet().train(), torch.ones(1, 1, 4, 4, 4))
    assert model.training                                      # and left as it was


# -- model-parameter randomisation -------------------------------------------------------------

def _tiny_resnet(stages=4, seed=0):
    arch = default_architecture()
    arch["kwargs"]["block_inplanes"] = [4, 8, 8, 8]
    arch["stages"] = stages
    torch.manual_seed(seed)
    card = ModelCard(architecture=arch, gradcam_layer=f"layer{min(stages, 3)}")
    return build_network(card).eval()


def test_randomisation_leaves_caller_model_bit_identical_and_is_reproducible():
    model = _tiny_resnet()
    x = torch.rand(4, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    calls = []
    res = randomization_test(model, x, seed=0, progress=lambda d, t: calls.append((d, t)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng_state)       # global RNG untouched
    assert res.steps == ("fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1")
    assert res.spearman.shape == (7, 4) and res.mean_spearman.shape == (7,)
    assert calls == [(k, 8) for k in range(1, 9)]
    np.testing.assert_array_equal(randomization_test(model, x, seed=0).spearman, res.spearman)
    assert not np.array_equal(randomization_test(model, x, seed=1).spearman, res.spearman,
                              equal_nan=True)
    rows = res.as_rows()
    assert [r["module"] for r in rows] == list(res.steps)
    assert rows[1]["randomised"] == "fc+layer4" and rows[0]["step"] == 1 and rows[0]["n_rois"] == 4
    # a shortened trunk has no layer4 to randomise (it is a parameter-free Identity)
    short = randomization_test(_tiny_resnet(stages=3), x[:1], order=None)
    assert short.steps == ("fc", "layer3", "layer2", "layer1", "bn1", "conv1")


def test_fully_randomised_gradcam_maps_correlate_weakly():
    model = _tiny_resnet(seed=0)
    x = torch.rand(6, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    final = np.concatenate([randomization_test(model, x, seed=s).spearman[-1] for s in range(3)])
    assert np.isfinite(final).sum() >= 6
    assert np.nanmean(np.abs(final)) < 0.5


def test_module_that_does_not_affect_the_map_keeps_spearman_one():
    x = torch.rand(3, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    res = randomization_test(TinyCamNet().eval(), x, order=["aux"], method="gradcam")
    assert res.steps == ("aux",)
    np.testing.assert_allclose(res.spearman, 1.0)
    assert res.n_constant.tolist() == [0]


def test_randomisation_is_cumulative():
    model = _tiny_resnet()
    model.aux = torch.nn.Linear(2, 2)                          # owns parameters, never used
    model.eval()
    x = torch.rand(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    res = randomization_test(model, x, order=["layer3", "aux"], seed=0)
    assert np.isfinite(res.spearman[0]).all() and (res.spearman[0] < 0.99).all()
    # "aux" does not affect the map: step 2 (layer3 + aux random) equals step 1, not 1.0
    np.testing.assert_array_equal(res.spearman[1], res.spearman[0])
    assert [r["randomised"] for r in res.as_rows()] == ["layer3", "layer3+aux"]


def test_constant_maps_give_nan_and_are_counted():
    x = torch.rand(3, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    # class 0 has zero weights in TinyCamNet: its Grad-CAM is exactly zero everywhere
    res = randomization_test(TinyCamNet().eval(), x, target=0, order=["aux", "features"])
    assert np.isnan(res.spearman).all() and np.isnan(res.mean_spearman).all()
    assert res.n_constant.tolist() == [3, 3]
    assert [r["n_constant"] for r in res.as_rows()] == [3, 3]


@pytest.mark.parametrize("order, match", [
    (["nope"], "'nope', which is not a module"),
    (["fc", "fc"], "twice"),
    ([], "at least one module"),
])
def test_randomisation_rejects_bad_order(order, match):
    with pytest.raises(ValueError, match=match):
        randomization_test(TinyCamNet().eval(), torch.ones(1, 1, 4, 4, 4), order=order)


def test_randomisation_rejects_a_string_order():
    with pytest.raises(TypeError, match="not a string; received 'fc'"):
        randomization_test(TinyCamNet().eval(), torch.ones(1, 1, 4, 4, 4), order="fc")


def test_randomisation_rejects_parameter_free_module():
    model = TinyCamNet()
    model.pool = torch.nn.Identity()
    model.eval()
    with pytest.raises(ValueError, match="'pool' in order has no parameters"):
        randomization_test(model, torch.ones(1, 1, 4, 4, 4), order=["pool"])


# -- noisy linear imputation (ROAD) ------------------------------------------------------------

def _spsolve_reference(values, removed):
    """The imputation system built entry by entry and solved with scipy.sparse (direct)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    idx = np.flatnonzero(removed)
    var = np.full(values.size, -1)
    var[idx] = np.arange(idx.size)
    a, b = sp.lil_matrix((idx.size, idx.size)), np.zeros(idx.size)
    for k, flat in enumerate(idx):
        c = np.unravel_index(flat, values.shape)
        for axis in range(3):
            for step in (-1, 1):
                nb = list(c)
                nb[axis] += step
                if 0 <= nb[axis] < values.shape[axis]:
                    j = np.ravel_multi_index(nb, values.shape)
                    a[k, k] += 1
                    if removed.flat[j]:
                        a[k, var[j]] -= 1
                    else:
                        b[k] += values.flat[j]
    return spla.spsolve(a.tocsc(), b), idx


def test_imputation_of_a_line_is_linear_interpolation():
    # a 1 x 1 x 5 volume with its ends kept: the harmonic fill of a line is the straight line
    v = np.array([[[0.0, 9.0, 9.0, 9.0, 4.0]]])
    removed = np.array([[[False, True, True, True, False]]])
    out = linear_imputation(v, removed, fill=-1.0, tol=1e-12)
    np.testing.assert_allclose(out[0, 0], [0, 1, 2, 3, 4], atol=1e-9)


def test_imputation_matches_a_sparse_direct_solve_and_keeps_kept_voxels():
    rng = np.random.default_rng(0)
    v = rng.random((6, 7, 8))
    removed = rng.random(v.shape) < 0.6
    out = linear_imputation(v, removed, fill=-1.0, tol=1e-10)
    ref, idx = _spsolve_reference(v, removed)
    np.testing.assert_allclose(out.flat[idx], ref, atol=1e-8)
    np.testing.assert_array_equal(out[~removed], v[~removed])          # kept: bit-identical
    assert v[~removed].min() <= out[removed].min() and out[removed].max() <= v[~removed].max()


def test_imputation_fills_regions_without_boundary_and_whole_volumes():
    v = np.zeros((2, 5, 5, 5))
    v[0, :, :, 0] = 1.0
    removed = np.zeros(v.shape, bool)
    removed[0, :, :, 0] = True                 # a removed face: its kept neighbours are all 0
    removed[0, :, :, 3:] = True                # touches kept voxels at x = 2 -> interpolated
    removed[1] = True                          # the whole volume: no boundary at all
    out = linear_imputation(v, removed, fill=[0.25, 0.75])
    np.testing.assert_allclose(out[0][removed[0]], 0.0, atol=1e-4)   # mean of zeros, not 1
    np.testing.assert_array_equal(out[1], 0.75)
    sealed = np.ones((5, 5, 5), bool)
    sealed[:, :, 2] = False                    # a kept wall (value 2) splits two removed halves
    wall = np.full((5, 5, 5), 2.0)
    np.testing.assert_allclose(linear_imputation(wall, sealed, fill=-1.0), 2.0, atol=1e-4)


def test_noisy_imputation_is_seeded_and_adds_noise_only_where_removed():
    rng = np.random.default_rng(1)
    v = rng.random((8, 8, 8))
    removed = rng.random(v.shape) < 0.5
    a = noisy_linear_imputation(v, removed, fill=0.0, noise=0.01, rng=3)
    b = noisy_linear_imputation(v, removed, fill=0.0, noise=0.01, rng=3)
    clean = linear_imputation(v, removed, fill=0.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[~removed], v[~removed])
    assert 0.008 < np.std(a[removed] - clean[removed]) < 0.012
    with pytest.raises(ValueError, match="noise must be"):
        noisy_linear_imputation(v, removed, fill=0.0, noise=-1.0, rng=0)
    with pytest.raises(ValueError, match="same shape"):
        linear_imputation(v, removed[:4], fill=0.0)
    with pytest.raises(ValueError, match="boolean"):
        linear_imputation(v, removed.astype(int), fill=0.0)


# -- ROAD curves and the pass rule -------------------------------------------------------------

def _road_setup(n=6):
    """8^3 ROIs with a bright 2x2x2 block (8 of 512 voxels) on a dark background; the model's
    malignant logit is sum over the block - 4, so P = sigmoid(4) with the block, sigmoid(-4)
    once its voxels are imputed from the dark background."""
    mask = np.zeros((8, 8, 8), np.float32)
    mask[2:4, 5:7, 1:3] = 1.0
    model = VoxelWeightNet(mask, c=4.0).eval()
    rois = torch.from_numpy(np.broadcast_to(mask, (n, 1, 8, 8, 8)).copy())
    return mask, model, rois


def test_road_hand_computed_map_on_the_evidence_passes_and_its_inverse_fails():
    mask, model, rois = _road_setup()
    n = len(rois)
    hi, lo = _sigmoid(4), _sigmoid(-4)
    on = road_curves(model, rois, np.broadcast_to(mask, (n, 8, 8, 8)), fill=0.0, noise=0.0,
                     steps=16, n_random=1)
    # MoRF: step 1 removes the 8 block voxels (and 24 tied zeros), imputed from zeros -> lo;
    # LeRF keeps the block until the last step (all removed: the fill, 0) -> hi until then
    np.testing.assert_allclose(on.morf, [[hi] + [lo] * 16] * n, atol=1e-5)
    np.testing.assert_allclose(on.lerf, [[hi] * 16 + [lo]] * n, atol=1e-5)
    gap = _trapezoid([hi] * 16 + [lo], 1 / 16) - _trapezoid([hi] + [lo] * 16, 1 / 16)
    np.testing.assert_allclose(on.gap, gap, atol=1e-5)
    off = road_curves(model, rois, np.broadcast_to(1 - mask, (n, 8, 8, 8)), fill=0.0, noise=0.0,
                      steps=16, n_random=1)
    np.testing.assert_allclose(off.gap, -gap, atol=1e-5)
    labels = np.ones(n, int)
    assert faithfulness_verdict(on.gap, on.gap_random, labels).status == "passes"
    assert faithfulness_verdict(off.gap, off.gap_random, labels).status == "fails"
    # the random control does not depend on the map (shared across methods by `sanity`)
    np.testing.assert_array_equal(on.random, off.random)
    np.testing.assert_array_equal(on.gap_random, off.gap_random)
    assert abs(np.median(on.gap_random)) < gap / 2


def test_road_does_not_see_scattered_removal_of_a_uniform_roi_unlike_a_constant_fill():
    # a uniform ROI: imputing any removed voxels from their neighbours gives the ROI back,
    # while setting them to a constant leaves a pattern of holes (the eraser's own signal)
    model = VoxelWeightNet(np.full((8, 8, 8), 1 / 64, np.float32), c=4.0).eval()
    rois = torch.full((2, 1, 8, 8, 8), 0.5)
    maps = np.random.default_rng(0).random((2, 8, 8, 8))
    road = road_curves(model, rois, maps, fill=0.0, noise=0.0, steps=8, n_random=1)
    np.testing.assert_allclose(road.morf[:, :-1], _sigmoid(0.0), atol=1e-5)
    old = perturbation_curves(model, rois, maps, baseline=0.0, steps=8, n_random=0)
    assert old.deletion[0, 4] < _sigmoid(0.0) - 0.2


def test_road_is_reproducible_with_channels_and_rejects_bad_options():
    _, model, rois = _road_setup(2)
    maps = np.random.default_rng(0).random((2, 8, 8, 8))
    kw = {"fill": 0.1, "noise": 0.02, "steps": 4, "n_random": 1, "seed": 5}
    calls = []
    a = road_curves(model, rois, maps, progress=lambda d, t: calls.append((d, t)), **kw)
    b = road_curves(model, rois, maps, batch_size=3, **kw)    # batching: float32 rounding only
    np.testing.assert_allclose(a.morf, b.morf, atol=1e-6)
    np.testing.assert_allclose(a.gap_random, b.gap_random, atol=1e-6)
    np.testing.assert_array_equal(road_curves(model, rois, maps, **kw).lerf, a.lerf)
    total = 2 * (2 + 4 * 3)
    assert calls[-1] == (total, total)
    assert a.fill == (0.1,) and a.noise == (0.02,)
    two = TwoChannelNet().eval()                       # (N, 2, z, y, x): one map for both channels
    res = road_curves(two, torch.rand(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0)),
                      maps, fill=[0.0, 1.0], noise=[0.0, 0.01], steps=4, n_random=0)
    assert res.morf.shape == (2, 5) and np.isnan(res.gap_random).all()
    with pytest.raises(ValueError, match="noise must be"):
        road_curves(model, rois, maps, fill=0.0, noise=-0.1)
    with pytest.raises(ValueError, match="one per input channel"):
        road_curves(model, rois, maps, fill=[0.0, 1.0, 2.0], noise=0.0)


class TwoChannelNet(torch.nn.Module):
    """logit_1 = mean of channel 0 - mean of channel 1 (two input channels)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        s = (x[:, 0].mean(dim=(1, 2, 3)) - x[:, 1].mean(dim=(1, 2, 3))) * self.scale
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_perturbation_curves_remove_a_voxel_from_every_channel():
    rois = torch.ones(1, 2, 4, 4, 4)
    res = perturbation_curves(TwoChannelNet().eval(), rois, np.zeros((1, 4, 4, 4)),
                              baseline=np.array([0.0, 1.0]).reshape(2, 1, 1, 1), steps=4,
                              n_random=0)
    # channel 0 falls from 1 to 0 in four steps, channel 1 stays 1: logit 0, -.25, ..., -1
    np.testing.assert_allclose(res.deletion[0], [_sigmoid(-k / 4) for k in range(5)], atol=1e-6)


@pytest.mark.parametrize("gaps, labels, status", [
    ([0.5, 0.4, 0.3, 0.2, 0.1, 0.05], [1] * 6, "passes"),
    ([0.5, 0.4, 0.3, 0.2, 0.1, -0.05], [1] * 6, "fails"),                # 5 of 6 = 83 % < 90 %
    ([0.5, 0.4, 0.3, 0.2, -0.3, -0.4], [1, 1, 1, 1, 0, 0], "undetermined"),  # 4 malignant
    ([0.5, 0.4, 0.3, 0.2, 0.1, np.nan, -0.4], [1] * 6 + [0], "passes"),  # NaN and benign ignored
    ([np.nan] * 6, [1] * 6, "not checked"),
])
def test_faithfulness_rule(gaps, labels, status):
    v = faithfulness_verdict(gaps, np.zeros(len(gaps)), labels)
    assert v.status == status and v.sentence.startswith(status)


def test_rule_needs_a_median_gap_above_random_and_the_warning_names_the_method():
    gaps = np.full(6, 0.01)
    assert faithfulness_verdict(gaps, np.full(6, 0.02), np.ones(6)).status == "fails"
    summary = pd.DataFrame({"method": ["gradcam", "integrated_gradients"],
                            "status": ["fails", "passes"], "verdict": ["fails on x", "passes"]})
    assert faithfulness_warning(summary, "integrated_gradients") is None
    assert "gradcam, whose maps fail" in faithfulness_warning(summary, "gradcam")
    assert "not checked" in faithfulness_warning(summary, "occlusion")
    assert "not checked" in faithfulness_warning(summary.iloc[:0], "gradcam")
    assert "not recorded" in faithfulness_warning(summary, None)
