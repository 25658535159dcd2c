"""The causal check: inpainting, effect summaries, and the cohort-level pass with a hand-set
'bead detector' model whose answers are known."""

import numpy as np
import pandas as pd
import pytest
import torch

from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.align.metrics import grow_mm
from discovery.patterns.causal import (
    CENTRE_COLUMNS,
    EFFECT_COLUMNS,
    FALLBACK_PARENCHYMA_HU,
    FLAG_COLUMNS,
    inpaint_parenchyma,
    case_deltas,
    case_edits,
    ALL_OFF_MASK,
    case_without,
    pattern_effects,
    rescore_without,
    summarize_effects,
)
from discovery.model.card import ModelCard, build_network
from discovery.model.edit import score_inputs
from discovery.model.rois import nodule_sites

SPACING = (1.5, 1.5, 1.5)


def _lung(shape=(40, 48, 48), seed=0):
    rng = np.random.default_rng(seed)
    return (-850.0 + rng.normal(0, 20, shape)).astype(np.float32)


def test_inpaint_replaces_only_removed_voxels_with_local_parenchyma():
    hu = _lung()
    hu[20, 20:23, 20:23] = 2600.0  # a bead
    remove = np.zeros(hu.shape, bool)
    remove[20, 20:23, 20:23] = True
    out = inpaint_parenchyma(hu, remove, spacing_mm=SPACING, seed=1)
    assert out is not hu and hu[20, 21, 21] == 2600.0  # input untouched
    np.testing.assert_array_equal(out[~remove], hu[~remove])
    assert out[remove].max() <= -600 and out[remove].min() >= -950
    # donors are drawn from the voxels around: every filled value exists in the shell
    assert np.isin(out[remove], hu[~remove]).all()
    np.testing.assert_array_equal(out, inpaint_parenchyma(hu, remove, spacing_mm=SPACING, seed=1))


def test_inpaint_protect_and_edge_cases():
    hu = _lung()
    remove = np.zeros(hu.shape, bool)
    remove[10:12, 10:12, 10:12] = True
    protect = np.zeros(hu.shape, bool)
    protect[10, 10, 10] = True
    out = inpaint_parenchyma(hu, remove, spacing_mm=SPACING, protect=protect)
    assert out[10, 10, 10] == hu[10, 10, 10]
    np.testing.assert_array_equal(inpaint_parenchyma(hu, np.zeros_like(remove), spacing_mm=SPACING), hu)
    soft = np.zeros((8, 8, 8), np.float32)  # no parenchyma anywhere: the documented constant
    r = np.zeros(soft.shape, bool)
    r[4, 4, 4] = True
    assert inpaint_parenchyma(soft, r, spacing_mm=SPACING)[4, 4, 4] == FALLBACK_PARENCHYMA_HU
    with pytest.raises(ValueError, match="boolean"):
        inpaint_parenchyma(hu, remove.astype(int), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="same shape"):
        inpaint_parenchyma(hu, remove[:-1], spacing_mm=SPACING)


def test_grow_mm_is_a_physical_ball():
    m = np.zeros((9, 9, 9), bool)
    m[4, 4, 4] = True
    g = grow_mm(m, 2.0, (1.0, 1.0, 1.0))
    assert g.sum() == 33  # lattice points with i²+j²+k² <= 4: 1 + 6 + 12 + 8 + 6
    g = grow_mm(m, 2.0, (2.0, 1.0, 1.0))  # one step along z is already 2 mm
    assert g[2, 4, 4] == False and g[3, 4, 4] and g[4, 2, 4]  # noqa: E712


def test_summarize_effects():
    e = summarize_effects([-0.3, -0.25, -0.35, -0.28])
    assert e.n == 4 and e.mean_delta == pytest.approx(-0.295)
    assert e.ci_low <= -0.295 <= e.ci_high < 0 and e.relied_upon
    e = summarize_effects([-0.02, 0.01, -0.01, 0.02])
    assert not e.relied_upon  # below min_effect and the interval spans 0
    e = summarize_effects([0.2])
    assert e.n == 1 and np.isnan(e.ci_low) and not e.relied_upon
    e = summarize_effects([])
    assert e.n == 0 and np.isnan(e.mean_delta)


class BeadDetector(torch.nn.Module):
    """Malignancy logit = 20 * (brightest voxel of the ROI - 0.5): metal-bright (> 1000 HU
    in the [-1000, 3000] window) means 'malignant'.  Hand-set, so effects are known."""

    def forward(self, x):
        peak = x.amax(dim=(1, 2, 3, 4))
        return torch.stack([torch.zeros_like(peak), 20.0 * (peak - 0.5)], dim=1)


def _case(seed, with_bead):
    hu = _lung(seed=seed)
    mask = np.zeros(hu.shape, np.int16)
    mask[18:22, 22:26, 22:26] = 1  # the nodule
    hu[mask > 0] = 30.0
    region_map = np.zeros(hu.shape, np.int16)
    region_map[19:22, 30:33, 22:26] = 1  # region 1: off the nodule, where the bead is
    region_map[19:22, 10:13, 22:26] = 2  # region 2: plain parenchyma
    if with_bead:
        hu[20, 33, 24] = 2600.0  # just outside region 1, inside its 3 mm halo
    affine = affine_from_spacing(SPACING)
    return Volume(hu, affine), Mask(mask, affine), region_map


def test_rescore_without_removes_the_bead():
    vol, mask, _ = _case(0, True)
    card = ModelCard()
    p0, p1 = rescore_without(BeadDetector(), card, vol, (19.5, 23.5, 23.5), vol.array > 1000,
                             protect=mask.array > 0)
    assert p0 > 0.99 and p1 < 0.01


def test_pattern_effects_finds_the_relied_upon_cluster_and_flags_its_nodules():
    cases = {f"c{i}": _case(i, with_bead=i < 4) for i in range(5)}
    rows = []
    for cid in cases:
        for k, cluster in ((1, 0), (2, 1)):
            rows.append({"case_id": cid, "nodule_id": "n1", "case_region": k, "cluster": cluster})
    regions = pd.DataFrame(rows)
    clusters = pd.DataFrame({"cluster": [0, 1]})
    model = BeadDetector()
    out, flags = pattern_effects(regions, clusters, load=cases.__getitem__, model=model,
                                 card=ModelCard())
    assert list(out.columns) == ["cluster"] + EFFECT_COLUMNS
    bead, plain = out.set_index("cluster").loc[0], out.set_index("cluster").loc[1]
    # four nodules drop from ~1 to ~0 once region 1 and its halo are filled; the fifth had
    # no bead (p ~ 0 before and after): mean ~ -0.8
    assert bead.effect_n == 5 and bead.effect_mean == pytest.approx(-0.8, abs=0.01)
    assert bool(bead.relied_upon)
    assert plain.effect_mean == pytest.approx(0.0, abs=1e-6) and not bool(plain.relied_upon)
    assert list(flags.columns) == FLAG_COLUMNS
    f = flags.set_index("case_id")
    assert f.loc[["c0", "c1", "c2", "c3"], "flagged"].all() and not f.loc["c4", "flagged"]
    assert (f.loc[["c0", "c1", "c2", "c3"], "flag_score"] > 0.98).all()
    assert f.loc["c4", "flag_score"] == pytest.approx(0.0, abs=1e-6)
    assert (f.loc[["c0", "c1", "c2", "c3"], "flag_clusters"] == "0").all()
    # the probability without the cluster is the first pass's p_after (the same edit), exactly
    # what removing the regions and re-scoring gives
    vol, mask, region_map = cases["c2"]
    centre = nodule_sites(mask)[0].center_zyx
    p0, p1 = rescore_without(model, ModelCard(), vol, centre,
                             grow_mm(region_map == 1, 3.0, SPACING), protect=mask.array > 0)
    assert f.loc["c2", "probability"] == p0 and f.loc["c2", "probability_without"] == p1


def test_a_runner_elsewhere_gives_the_same_effects_and_flags():
    """pattern_effects(run=...): the per-case steps computed by a runner (here in reverse
    order of the jobs, results put back in order) give exactly the in-place result."""
    from concurrent.futures import ThreadPoolExecutor

    cases = {f"c{i}": _case(i, with_bead=i < 4) for i in range(5)}
    rows = [{"case_id": cid, "nodule_id": "n1", "case_region": k, "cluster": c}
            for cid in cases for k, c in ((1, 0), (2, 1)) if cid != "c4" or c == 1]
    regions, clusters = pd.DataFrame(rows), pd.DataFrame({"cluster": [0, 1]})
    steps = []

    def run(step, jobs):
        steps.append((step.__name__, [j[0] for j in jobs]))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(step, cid, r, load=cases.__getitem__, model=BeadDetector(),
                                   card=ModelCard(), **kw) for cid, r, kw in reversed(jobs)]
        return [f.result() for f in reversed(futures)]

    here = pattern_effects(regions, clusters, load=cases.__getitem__, model=BeadDetector(),
                           card=ModelCard())
    there = pattern_effects(regions, clusters, load=None, model=None, card=ModelCard(), run=run)
    for a, b in zip(here, there):
        pd.testing.assert_frame_equal(a, b)
    # every case's deltas, each case read once; no second pass: every nodule has regions in
    # one supporting cluster only, whose removal the first pass already scored
    assert steps == [("case_edits", list(cases))]


def test_an_unreadable_case_is_skipped_not_fatal(caplog):
    cases = {f"c{i}": _case(i, with_bead=i < 4) for i in range(5)}

    def load(case_id):
        if case_id == "c1":
            raise OSError("arrays file truncated")
        return cases[case_id]

    rows = [{"case_id": cid, "nodule_id": "n1", "case_region": 1, "cluster": 0} for cid in cases]
    out, flags = pattern_effects(pd.DataFrame(rows), pd.DataFrame({"cluster": [0]}), load=load,
                                 model=BeadDetector(), card=ModelCard())
    assert out.loc[0, "effect_n"] == 4 and bool(out.loc[0, "relied_upon"])
    assert "c1" not in set(flags["case_id"]) and len(flags) == 4
    assert any("skips case c1" in r.getMessage() for r in caplog.records)


def test_pattern_effects_input_errors():
    with pytest.raises(ValueError, match="case_region"):
        pattern_effects(pd.DataFrame({"case_id": [], "nodule_id": [], "cluster": []}),
                        pd.DataFrame({"cluster": []}), load=None, model=None, card=None)


class BeadCounter(torch.nn.Module):
    """Malignancy logit = 20 * (number of metal-bright ROI voxels - 1.5): two beads mean
    'malignant', one or none 'benign'.  Hand-set, so effects are known."""

    def forward(self, x):
        n = (x > 0.75).sum(dim=(1, 2, 3, 4)).to(x.dtype)
        return torch.stack([torch.zeros_like(n), 20.0 * (n - 1.5)], dim=1)


def _two_bead_case(seed, with_beads):
    vol, mask, region_map = _case(seed, with_bead=with_beads)
    if with_beads:
        vol.array[20, 9, 24] = 2600.0  # just outside region 2, inside its 3 mm halo
    return vol, mask, region_map


def test_a_nodule_in_two_supporting_clusters_has_them_removed_together():
    """Either bead's cluster alone turns 'malignant' into 'benign', so both are relied upon;
    the flag removes all of the nodule's regions at once, in the same pass over the cases."""
    cases = {f"c{i}": _two_bead_case(i, with_beads=i < 4) for i in range(5)}
    rows = [{"case_id": cid, "nodule_id": "n1", "case_region": k, "cluster": k - 1}
            for cid in cases for k in (1, 2)]
    regions, clusters = pd.DataFrame(rows), pd.DataFrame({"cluster": [0, 1]})
    steps = []
    here = run_here_recording(cases, BeadCounter(), steps)
    out, flags = pattern_effects(regions, clusters, load=None, model=None, card=ModelCard(),
                                 run=here)
    assert out["relied_upon"].all() and (out["effect_mean"] < -0.7).all()
    assert steps == [("case_edits", list(cases))]
    f = flags.set_index("case_id")
    assert f.loc[["c0", "c1", "c2", "c3"], "flagged"].all() and not f.loc["c4", "flagged"]
    assert (f.loc[["c0", "c1", "c2", "c3"], "flag_clusters"] == "0,1").all()
    assert f.loc["c4", "flag_clusters"] == ""        # no bead: no cluster moves it
    vol, mask, region_map = cases["c1"]
    centre = nodule_sites(mask)[0].center_zyx
    both = grow_mm(np.isin(region_map, [1, 2]), 3.0, SPACING)
    p0, p1 = rescore_without(BeadCounter(), ModelCard(), vol, centre, both,
                             protect=mask.array > 0)
    assert p0 > 0.99 and p1 < 1e-6
    assert f.loc["c1", "probability"] == p0 and f.loc["c1", "probability_without"] == p1


def test_the_flag_does_not_depend_on_the_clustering():
    """The same two-bead nodules, their regions left unclustered (-1) or split between a
    cluster and noise: flagged all the same (all off-mask regions removed together), with
    the clusters that alone lower the probability named."""
    cases = {f"c{i}": _two_bead_case(i, with_beads=i < 4) for i in range(5)}
    for labels, named in (((-1, -1), ""), ((0, -1), "0")):
        rows = [{"case_id": cid, "nodule_id": "n1", "case_region": k, "cluster": c}
                for cid in cases for k, c in zip((1, 2), labels)]
        out, flags = pattern_effects(pd.DataFrame(rows), pd.DataFrame({"cluster": [0]}),
                                     load=cases.__getitem__, model=BeadCounter(),
                                     card=ModelCard())
        f = flags.set_index("case_id")
        assert list(f.index) == list(cases)
        assert f.loc[["c0", "c1", "c2", "c3"], "flagged"].all() and not f.loc["c4", "flagged"]
        assert (f.loc[["c0", "c1", "c2", "c3"], "flag_score"] > 0.99).all()
        assert (f.loc[["c0", "c1", "c2", "c3"], "flag_clusters"] == named).all()
        assert f.loc["c4", "flag_clusters"] == ""


def run_here_recording(cases, model, steps):
    def run(step, jobs):
        steps.append((step.__name__, [j[0] for j in jobs]))
        return [step(cid, r, load=cases.__getitem__, model=model, card=ModelCard(), **kw)
                for cid, r, kw in jobs]
    return run


def test_stored_centres_replace_the_masks_centres(monkeypatch):
    """With the findings table (``nodules=``) the nodule centres are the stored ones: the
    masks' centres are not computed, and the result is the same."""
    cases = {f"c{i}": _case(i, with_bead=i < 4) for i in range(5)}
    rows = [{"case_id": cid, "nodule_id": "n1", "case_region": k, "cluster": c}
            for cid in cases for k, c in ((1, 0), (2, 1))]
    regions, clusters = pd.DataFrame(rows), pd.DataFrame({"cluster": [0, 1]})
    kw = {"load": cases.__getitem__, "model": BeadDetector(), "card": ModelCard()}
    expected = pattern_effects(regions, clusters, **kw)
    centre = nodule_sites(cases["c0"][1])[0].center_zyx
    findings = pd.DataFrame([{"case_id": cid, "nodule_id": "n1",
                              **dict(zip(CENTRE_COLUMNS, centre))} for cid in cases])

    def no_sites(mask):
        raise AssertionError("the centres were computed again")

    monkeypatch.setattr("discovery.patterns.causal.nodule_sites", no_sites)
    got = pattern_effects(regions, clusters, nodules=findings, **kw)
    for a, b in zip(expected, got):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    with pytest.raises(ValueError, match="nodules is missing"):
        pattern_effects(regions, clusters, nodules=findings.drop(columns="center_x"), **kw)


def test_case_steps_score_each_roi_once():
    """case_deltas: one forward pass for the case's baseline and edited ROIs (the unedited
    ROI once per nodule, not once per cluster); case_without: the edited ROIs only."""
    vol, mask, region_map = _case(0, with_bead=True)
    rows = pd.DataFrame([{"case_id": "c0", "nodule_id": "n1", "case_region": k, "cluster": k - 1}
                         for k in (1, 2)])
    sizes = []

    class Counting(BeadDetector):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

    load = {"c0": (vol, mask, region_map)}.__getitem__
    found = case_deltas("c0", rows, load=load, model=Counting(), card=ModelCard(), clusters=[0, 1])
    assert sizes == [3] and [(n, c) for n, c, _, _ in found] == [("n1", 0), ("n1", 1)]
    assert found[0][2] == found[1][2] > 0.99 and found[0][3] < 0.01
    sizes.clear()
    both = case_deltas("c0", rows, load=load, model=Counting(), card=ModelCard(), clusters=[0, 1],
                       together=True)
    assert sizes == [4] and [(n, c) for n, c, _, _ in both] == [("n1", ALL_OFF_MASK), ("n1", 0),
                                                                ("n1", 1)]
    assert both[1:] == found and both[0][3] < 0.01
    sizes.clear()
    got = case_without("c0", rows, load=load, model=Counting(), card=ModelCard())
    assert sizes == [2] and list(got) == ["n1"] and got["n1"] < 0.01  # one ROI, paired with itself


def test_case_edits_scores_each_member_alone_only_where_its_cluster_has_others():
    """members=True: regions 1 (by the bead) and 2 share cluster 0, so each is also removed
    alone (2 more ROIs); a region alone in its nodule's cluster reuses that cluster's edit
    (no more ROIs). The members' changes are those of each region as its own cluster."""
    vol, mask, region_map = _case(0, with_bead=True)
    load = {"c0": (vol, mask, region_map)}.__getitem__
    sizes = []

    class Counting(BeadDetector):
        def forward(self, x):
            sizes.append(len(x))
            return super().forward(x)

    rows = pd.DataFrame([{"case_id": "c0", "nodule_id": "n1", "case_region": k, "cluster": 0,
                          "region_key": f"r{k}"} for k in (1, 2)])
    got = case_edits("c0", rows, load=load, model=Counting(), card=ModelCard(), clusters=[0],
                     together=True, members=True)
    assert sum(sizes) == 1 + 1 + 2 + 1  # unedited, cluster 0, each member, all together
    alone = case_deltas("c0", rows.assign(cluster=rows["case_region"]), load=load,
                        model=BeadDetector(), card=ModelCard(), clusters=[1, 2])
    assert got.members == {f"r{c}": p1 - p0 for _, c, p0, p1 in alone}
    assert got.members["r1"] < -0.99 and abs(got.members["r2"]) < 1e-6
    assert got.after[("n1", 0)] == got.after[("n1", ALL_OFF_MASK)] < 0.01
    sizes.clear()
    split = case_edits("c0", rows.assign(cluster=[0, 1]), load=load, model=Counting(),
                       card=ModelCard(), clusters=[0, 1], members=True)
    assert sum(sizes) == 1 + 2  # no edit beyond the clusters'
    assert split.members == got.members
    with pytest.raises(ValueError, match="region_key"):
        case_edits("c0", rows.drop(columns="region_key"), load=load, model=BeadDetector(),
                   card=ModelCard(), clusters=[0], members=True)


def test_a_rois_probability_does_not_depend_on_its_batch():
    """The network's output for a ROI is the same in any batch of two or more (to the last
    bit on most CPUs; within 1e-7 where AVX-512 / AMX kernels block by batch size), and
    score_inputs never runs a batch of one: so scoring the causal check's ROIs together
    gives the probabilities of the [before, after] pairs, and the same list always the
    same ones."""
    torch.manual_seed(0)
    card = ModelCard()
    model = build_network(card).eval()
    x = np.random.default_rng(0).random((18, 1, *card.roi_size_vox), dtype=np.float32)
    with torch.no_grad():
        pairs = np.array([torch.softmax(model(torch.from_numpy(x[[i, (i + 1) % 18]])),
                                        1)[0, 1].item() for i in range(18)])
    together = score_inputs(model, list(x))
    np.testing.assert_allclose(together, pairs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(score_inputs(model, list(x)), together)     # deterministic
    np.testing.assert_allclose(score_inputs(model, list(x[:17]))[16], pairs[16], rtol=0,
                               atol=1e-6)                       # 16 + 1 run as 15 + 2
    np.testing.assert_allclose(score_inputs(model, [x[3]])[0], pairs[3], rtol=0,
                               atol=1e-6)                       # alone: beside a copy of itself
    assert len(score_inputs(model, [])) == 0


def test_exemplars_are_the_members_whose_own_removal_moves_the_prediction_most():
    """One cluster mixing the bead's regions (c2, c3: removing one takes p from ~1 to ~0)
    with plain parenchyma (c0, c1, and c4, which has no bead): the exemplars shown first are
    the bead regions, whatever order the clustering gave; in the one pass over the cases."""
    cases = {f"c{i}": _case(i, with_bead=i < 4) for i in range(5)}
    picks = {"c0": 2, "c1": 2, "c2": 1, "c3": 1, "c4": 1}
    regions = pd.DataFrame([{"case_id": c, "nodule_id": "n1", "case_region": k, "cluster": 0,
                             "region_key": f"{c}/n1/r{k}"} for c, k in picks.items()])
    centre_first = ["c0/n1/r2", "c1/n1/r2", "c4/n1/r1", "c2/n1/r1", "c3/n1/r1"]
    clusters = pd.DataFrame({"cluster": [0], "exemplars": [centre_first]})
    steps = []

    def run(step, jobs):
        steps.append((step.__name__, [j[0] for j in jobs]))
        return [step(cid, r, load=cases.__getitem__, model=BeadDetector(), card=ModelCard(),
                     **kw) for cid, r, kw in jobs]

    out, _ = pattern_effects(regions, clusters, load=None, model=None, card=ModelCard(), run=run)
    row = out.iloc[0]
    assert row.effect_mean == pytest.approx(-0.4, abs=0.01)  # 2 of 5 nodules drop by ~1
    assert set(row.exemplars[:2]) == {"c2/n1/r1", "c3/n1/r1"}
    assert sorted(row.exemplars) == sorted(centre_first)
    assert steps == [("case_edits", list(cases))]
    kept, _ = pattern_effects(regions, clusters, load=cases.__getitem__, model=BeadDetector(),
                              card=ModelCard(), exemplars_by_effect=False)
    assert list(kept.iloc[0].exemplars) == centre_first
    # a cluster whose removal raises the probability on average shows its largest rises
    # first (here the mirror image: a detector of the bead's absence)
    class NoBead(BeadDetector):
        def forward(self, x):
            return -super().forward(x)

    up, _ = pattern_effects(regions, clusters, load=cases.__getitem__, model=NoBead(),
                            card=ModelCard())
    assert up.iloc[0].effect_mean > 0.3
    assert set(up.iloc[0].exemplars[:2]) == {"c2/n1/r1", "c3/n1/r1"}


def _whole_scan_roi(vol, mask, region_map, regs, centre, card, reach_mm=3.0, seed=0):
    """The edited ROI as the causal check made it before: the regions grown over the whole
    scan, the whole scan copied and inpainted."""
    from discovery.model.rois import roi_input

    remove = grow_mm(np.isin(region_map, regs), reach_mm, vol.spacing_mm)
    edited = inpaint_parenchyma(vol.array, remove, spacing_mm=vol.spacing_mm,
                                protect=mask.array > 0, seed=seed)
    return roi_input(Volume(edited, vol.affine), centre, card)


@pytest.mark.parametrize("regs", [[1], [2], [1, 2], [7], []])
def test_an_edit_on_its_box_gives_the_roi_of_the_whole_scan_edit(regs):
    """The causal check edits only the box an edit can change, in a working copy it
    restores: the ROI is bit for bit the one of editing a copy of the whole scan, and the
    scan is left as it was."""
    from discovery.patterns.causal import _edited_roi, _open_case

    vol, mask, region_map = _case(3, with_bead=True)
    card = ModelCard()
    rows = pd.DataFrame({"nodule_id": ["n1"], "center_z": [19.5], "center_y": [23.5],
                         "center_x": [23.5]})
    opened = _open_case(lambda cid: (vol, mask, region_map), "c", rows)
    before = vol.array.copy()
    got = _edited_roi(opened, regs, (19.5, 23.5, 23.5), card, seed=4, reach_mm=3.0)
    np.testing.assert_array_equal(got, _whole_scan_roi(vol, mask, region_map, regs,
                                                       (19.5, 23.5, 23.5), card, seed=4))
    np.testing.assert_array_equal(opened.work, before)      # restored
    np.testing.assert_array_equal(vol.array, before)


def test_an_edit_without_parenchyma_around_draws_from_the_whole_scan_as_before():
    """No parenchyma within the donor shell of the box: the edit falls back to the whole
    scan's parenchyma, as the whole-scan edit does."""
    from discovery.patterns.causal import _edited_roi, _open_case

    vol, mask, region_map = _case(5, with_bead=False)
    vol.array[:, 20:48, :] = 40.0          # soft tissue all around region 1
    vol.array[mask.array > 0] = 30.0
    card = ModelCard()
    rows = pd.DataFrame({"nodule_id": ["n1"]})
    opened = _open_case(lambda cid: (vol, mask, region_map), "c", rows)
    got = _edited_roi(opened, [1], (19.5, 23.5, 23.5), card, seed=1, reach_mm=3.0)
    np.testing.assert_array_equal(got, _whole_scan_roi(vol, mask, region_map, [1],
                                                       (19.5, 23.5, 23.5), card, seed=1))
    assert inpaint_parenchyma(vol.array[15:25, 26:38, 18:30],
                              region_map[15:25, 26:38, 18:30] == 1, spacing_mm=SPACING,
                              fallback=False) is None


def test_label_boxes_equal_find_objects():
    from scipy import ndimage

    from discovery.model.rois import label_boxes

    rng = np.random.default_rng(0)
    for shape in [(7, 9, 11), (1, 5, 5), (12, 3, 4)]:
        labels = rng.integers(0, 6, shape) * (rng.random(shape) < 0.05)
        labels[labels == 3] = 0                       # a missing label in the middle
        assert label_boxes(labels) == ndimage.find_objects(labels)
    assert label_boxes(np.zeros((3, 4, 5), int)) == []
    with pytest.raises(ValueError, match=">= 0"):
        label_boxes(np.full((2, 2, 2), -1))
