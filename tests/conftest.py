"""Shared pytest fixtures.

Review-app fixtures (``tiny_results*``): tiny results folders built directly through
:class:`discovery.store.tables.ResultsStore`, without any model, so that the app tests are fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# -- an untrained demo-architecture model ---------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The demo architecture with random weights (seed 3: a seed whose untrained net gives every
    test nodule a non-zero map), saved as a model folder; one per test module."""
    import torch

    from discovery.model.card import ModelCard, build_network, save_model

    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("model")
    save_model(build_network(ModelCard()), ModelCard(), out)
    return out


# -- review-app fixtures -------------------------------------------------------------------

TINY_SHAPE = (12, 40, 40)
TINY_CLUSTER_DESCRIPTION = "soft tissue density (mean 35 HU), small (20 mm³), about 11 mm from the nodule centre"


def _ball(shape, center, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    cz, cy, cx = center
    return (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def _gauss(shape, center, sigma) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    cz, cy, cx = center
    d2 = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2
    return np.exp(-d2 / (2.0 * sigma ** 2))


def _tiny_case(case_id: str, *, nodule_yx, offmask_yx, probability: float, peak: float):
    """Arrays and store rows of one synthetic case with one nodule and one off-mask region."""
    z0 = 6
    nod = _ball(TINY_SHAPE, (z0, *nodule_yx), 4)
    blob = _ball(TINY_SHAPE, (z0, *offmask_yx), 2)
    ct = np.full(TINY_SHAPE, -850, np.int16)
    ct[nod] = 40
    ct[blob] = 30
    mask = nod.astype(np.int16)                                   # label 1 = nodule "n1"
    shifted = (z0, nodule_yx[0], nodule_yx[1] + 3)                 # partly off the mask
    attr = (peak * _gauss(TINY_SHAPE, shifted, 3.0) + 0.8 * peak * _gauss(TINY_SHAPE, (z0, *offmask_yx), 2.0))
    attr = np.where(attr > 0.05 * peak, attr, 0).astype(np.float32)
    region_map = (blob & (attr > 0.2 * peak)).astype(np.int16)    # off-mask region 1
    rz, ry, rx = (float(v.mean()) for v in np.nonzero(region_map))
    key = f"{case_id}/n1/r1"
    nodule = {
        "case_id": case_id, "nodule_id": "n1", "probability": probability,
        "predicted_label": int(probability >= 0.5), "rma": 0.31, "rra": 0.4, "pointing_hit": 1.0,
        "peak_distance_mm": 0.0, "near_mass": 0.55, "verdict": "partial", "n_offmask_regions": 1,
        "offmask_mass_share": 0.2, "volume_mm3": float(nod.sum()), "center_z": float(z0),
        "center_y": float(nodule_yx[0]), "center_x": float(nodule_yx[1]), "status": "ok", "error": "",
        # the malignant call rests on its surroundings (a rim of ground glass), the other not
        "p_without_surroundings": 0.25 if probability >= 0.5 else probability,
        "rests_on_surroundings": float(probability >= 0.5),
        "surroundings_median_hu": -610.0 if probability >= 0.5 else -850.0,
    }
    region = {
        "region_key": key, "case_id": case_id, "nodule_id": "n1", "region_index": 1,
        "case_region": 1, "probability": probability, "n_voxels": int(region_map.sum()),
        "volume_mm3": float(region_map.sum()), "mass_share": 0.2, "peak_value": 0.8 * peak,
        "centroid_z": rz, "centroid_y": ry, "centroid_x": rx, "offset_z_mm": rz - z0,
        "offset_y_mm": ry - nodule_yx[0], "offset_x_mm": rx - nodule_yx[1],
        "offset_distance_mm": float(np.hypot(ry - nodule_yx[0], rx - nodule_yx[1])),
        "distance_to_mask_mm": 6.0, "mean_hu": 30.0, "max_hu": 30.0, "std_hu": 0.0, "cluster": -1,
    }
    arrays = {"ct": ct, "mask": mask, "attribution": attr, "region_map": region_map,
              "affine": np.eye(4)}
    return arrays, nodule, region


def build_tiny_results(root: Path, *, with_regions: bool = True, url: str | None = None,
                       offmask_share: float | None = None) -> Path:
    """Write a tiny results folder: cases ``case-A`` and ``case-B`` (one nodule each, one
    off-mask region each, one pattern cluster) and a failed case ``case-C``.  With
    ``with_regions=False`` the nodules have no off-mask regions and there are no clusters.
    ``url``: keep the tables on that PostgreSQL database instead of SQLite; ``offmask_share``:
    the nodules' ``offmask_mass_share`` (default 0.2)."""
    from discovery.store.tables import CLUSTER_COLUMNS, ResultsStore, save_case_arrays

    store = ResultsStore(root, url=url)
    specs = {"case-A": dict(nodule_yx=(20, 16), offmask_yx=(10, 30), probability=0.83, peak=2.5),
             "case-B": dict(nodule_yx=(22, 22), offmask_yx=(32, 8), probability=0.21, peak=0.9)}
    keys = []
    for case_id, spec in specs.items():
        arrays, nodule, region = _tiny_case(case_id, **spec)
        if not with_regions:
            arrays["region_map"] = np.zeros_like(arrays["region_map"])
            nodule["n_offmask_regions"] = 0
        if offmask_share is not None:
            nodule["offmask_mass_share"] = float(offmask_share)
        rel = save_case_arrays(root, case_id, **arrays)
        store.put_case({"case_id": case_id, "status": "ok", "error": "", "n_nodules": 1,
                        "shape": list(TINY_SHAPE), "spacing_mm": [1.0, 1.0, 1.0],
                        "source_kind": "nifti", "arrays": rel},
                       [nodule], [region] if with_regions else [])
        keys.append(region["region_key"])
    store.put_case({"case_id": "case-C", "status": "failed", "source_kind": "dicom",
                    "error": "could not read the CT series: slice spacing is not uniform"}, [], [])
    if with_regions:
        regions = pd.DataFrame({"region_key": keys, "cluster": [0, 0],
                                "embedding_x": [-0.5, 0.5], "embedding_y": [0.2, -0.2]})
        clusters = pd.DataFrame([{
            "cluster": 0, "n_regions": 2, "n_cases": 2, "n_nodules": 2, "stability": 0.92,
            "mean_probability": 0.52,
            "share_predicted_malignant": 0.5, "pool_predicted_malignant": 0.5,
            "enrichment_predicted": 1.0, "p_predicted": 1.0, "q_predicted": 1.0,
            "mean_mean_hu": 30.0, "median_halo_max_hu": 2600.0, "mean_offset_distance_mm": 11.0,
            "mean_volume_mm3": 20.0, "relation": "inside lung", "direction": "lateral",
            "description": TINY_CLUSTER_DESCRIPTION, "exemplars": keys, "effect_n": 2,
            "effect_mean": -0.25, "effect_ci_low": -0.3, "effect_ci_high": -0.2,
            "relied_upon": 1,
        }], columns=CLUSTER_COLUMNS)
        # case-A's malignant prediction rests on the (metal-dense, relied-upon) cluster 0
        flags = pd.DataFrame({"case_id": ["case-A", "case-B"], "nodule_id": ["n1", "n1"],
                              "probability": [0.83, 0.21], "probability_without": [0.31, 0.2],
                              "flag_score": [0.52, 0.01], "flagged": [True, False],
                              "flag_clusters": ["0", "0"]})
        store.set_patterns(regions, clusters, flags)
    store.close()
    return root


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """Tiny results folder (2 scored cases, 1 failed, 2 regions in 1 cluster). Shared by the
    session: tests that write reviews should use ``tiny_results_fresh``."""
    return build_tiny_results(tmp_path_factory.mktemp("tiny_results"))


@pytest.fixture
def tiny_results_fresh(tmp_path) -> Path:
    """A fresh copy of the tiny results folder for one test (safe to write reviews into)."""
    return build_tiny_results(tmp_path / "tiny_results")


@pytest.fixture(scope="session")
def tiny_results_no_regions(tmp_path_factory) -> Path:
    """Tiny results folder whose nodules have no off-mask regions (hence no clusters)."""
    return build_tiny_results(tmp_path_factory.mktemp("tiny_results_no_regions"), with_regions=False)


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest leaves ``sys.modules['__main__']`` pointing at the page script it
    ran; a later process pool with the spawn context would then re-run that page in every
    worker.  Put the real main module back after each test."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


# -- PostgreSQL --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on loopback for this test session (``tests/_postgres.py``).

    Skipped where no server binaries are installed, unless ``DISCOVERY_REQUIRE_POSTGRES=1``
    (set by ``.ci/run``), which makes a missing server a failure."""
    import os

    from _postgres import start_server

    try:
        server = start_server()
    except FileNotFoundError as exc:
        if os.environ.get("DISCOVERY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"DISCOVERY_REQUIRE_POSTGRES=1 but {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server, request):
    """URL of a new, empty database on the session's PostgreSQL server (dropped after)."""
    import re
    import uuid

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)
