"""Our RMA, RRA and pointing game agree with Quantus 0.6.0 where both are defined.

How Quantus is called here (read from quantus/metrics/base.py and localisation/*.py):

* ``model=None`` is accepted: with pre-computed ``a_batch`` no model is wrapped or run, so
  no torch model (and no torchvision) is needed.
* Arrays are batched with a channel axis, ``(N, 1, z, y, x)``, for ``x_batch`` (any values;
  only its shape is used), ``a_batch`` and ``s_batch``; ``y_batch`` has one label per
  sample.  ``channel_first=True`` must be passed: inferring it raises "Only batched 1D and
  2D multi-channel input dimensions supported" on 3-D volumes.
* ``disable_warnings=True``: otherwise each metric's constructor sleeps 1 s and prints a
  paragraph to stdout.  ``normalise=False`` and ``abs=False`` keep the maps as given (the
  default ``normalise_by_max`` divides by the maximum over the *whole batch*, harmless for
  these ratio metrics, checked below).

Known differences, each asserted below:

* Empty mask: Quantus's pointing game scores a **hit** (``hit[empty] = np.nan`` on a bool
  array stores True); ours gives NaN.  Quantus's RMA and RRA give NaN like ours but emit
  ``UserWarning("Return np.nan as result as the segmentation map is empty.")`` even with
  ``disable_warnings=True``, and RRA also a ``RuntimeWarning`` (0/0).
* Quantus's RMA sums all attributions, negative ones included; ours rejects negative maps
  (apply ReLU first), so agreement is only claimed on non-negative maps.
* Ties at the maximum: Quantus's pointing game hits when *any* tied maximum is in the mask;
  ours takes the first in C order.  Quantus's RRA sorts with an unstable sort.  Agreement
  is checked on continuous maps (no ties).
* All-zero map: Quantus raises ``AssertionError`` ("all equal to zero"); ours gives NaN.
* Quantus ignores voxel spacing and has no tolerance: compare with ``tolerance_mm=0``.
* Quantus's pointing game returns ``numpy.bool_`` scores, not floats.
"""

import socket
import warnings

import numpy as np
import pytest

quantus = pytest.importorskip("quantus")  # guard only: quantus is in the `test` extra

from discovery.align.metrics import pointing_game, relevance_mass, relevance_rank

SHAPE = (6, 7, 8)  # distinct, none of size 1 (Quantus drops size-1 axes when matching shapes)
ISO = (1.0, 1.0, 1.0)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any attempt by Quantus to open a connection while a test runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _quantus(metric_cls, attrs, masks, **init):
    """Scores of a Quantus localisation metric on lists of (z, y, x) maps and masks."""
    options = {"disable_warnings": True, "display_progressbar": False}
    options |= {"normalise": False, "abs": False} | init
    metric = metric_cls(**options)
    a = np.stack(attrs)[:, None].astype(np.float64)
    s = np.stack(masks)[:, None].astype(bool)
    scores = metric(
        model=None,
        x_batch=np.zeros(a.shape, np.float32),
        y_batch=np.zeros(len(a), np.int64),
        a_batch=a,
        s_batch=s,
        channel_first=True,
    )
    return scores


def _cases(seed, n=12):
    """Continuous non-negative maps with non-empty masks: boxes around the peak (hits),
    random boxes and random scatters (mostly misses)."""
    rng = np.random.default_rng(seed)
    attrs, masks = [], []
    for i in range(n):
        a = rng.random(SHAPE) ** 3
        m = np.zeros(SHAPE, bool)
        if i % 3 == 0:
            z, y, x = np.unravel_index(np.argmax(a), SHAPE)
            m[max(z - 1, 0) : z + 2, max(y - 2, 0) : y + 1, x : x + 3] = True
        elif i % 3 == 1:
            lo = [int(rng.integers(0, d - 2)) for d in SHAPE]
            m[lo[0] : lo[0] + 2, lo[1] : lo[1] + 3, lo[2] : lo[2] + 2] = True
        else:
            m = rng.random(SHAPE) < 0.1
            m.flat[int(rng.integers(m.size))] = True
        attrs.append(a)
        masks.append(m)
    return attrs, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rma_rra_pointing_agree_on_random_masks(seed):
    attrs, masks = _cases(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all on non-empty masks
        q_rma = _quantus(quantus.RelevanceMassAccuracy, attrs, masks)
        q_rra = _quantus(quantus.RelevanceRankAccuracy, attrs, masks)
        q_pg = _quantus(quantus.PointingGame, attrs, masks)
    ours_rma = [relevance_mass(a, m) for a, m in zip(attrs, masks)]
    ours_rra = [relevance_rank(a, m) for a, m in zip(attrs, masks)]
    ours_pg = [pointing_game(a, m, ISO, tolerance_mm=0.0) for a, m in zip(attrs, masks)]
    np.testing.assert_allclose(np.asarray(q_rma, float), ours_rma, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(q_rra, float), ours_rra, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(q_pg, float), ours_pg, rtol=0, atol=1e-6)
    assert {0.0, 1.0} <= set(ours_pg)  # both hits and misses were compared


def test_quantus_default_normalisation_does_not_change_the_agreement():
    attrs, masks = _cases(3, n=6)
    attrs = [a * (i + 1) for i, a in enumerate(attrs)]  # different maxima per sample
    for cls, ours in (
        (quantus.RelevanceMassAccuracy, relevance_mass),
        (quantus.RelevanceRankAccuracy, relevance_rank),
    ):
        q = _quantus(cls, attrs, masks, normalise=True)  # normalise_by_max over the batch
        expected = [ours(a, m) for a, m in zip(attrs, masks)]
        np.testing.assert_allclose(np.asarray(q, float), expected, rtol=0, atol=1e-6)


def test_quietly_no_stdout_and_no_sleep(capsys):
    import time

    attrs, masks = _cases(4, n=2)
    t0 = time.perf_counter()
    for cls in (quantus.RelevanceMassAccuracy, quantus.RelevanceRankAccuracy, quantus.PointingGame):
        _quantus(cls, attrs, masks)
    assert time.perf_counter() - t0 < 1.0  # warn_parameterisation would sleep 1 s each
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ known differences


def test_empty_mask_quantus_pointing_hits_ours_is_nan():
    attrs, masks = _cases(5, n=2)
    masks[1] = np.zeros(SHAPE, bool)
    q_pg = _quantus(quantus.PointingGame, attrs, masks)
    assert isinstance(q_pg[1], np.bool_) and bool(q_pg[1]) is True  # an empty mask "hit"
    assert np.isnan(pointing_game(attrs[1], masks[1], ISO, tolerance_mm=0.0))

    with pytest.warns(UserWarning, match="segmentation map is empty"):
        q_rma = _quantus(quantus.RelevanceMassAccuracy, attrs, masks)
    with (
        pytest.warns(UserWarning, match="segmentation map is empty"),
        pytest.warns(RuntimeWarning, match="invalid value"),
    ):
        q_rra = _quantus(quantus.RelevanceRankAccuracy, attrs, masks)
    assert np.isnan(q_rma[1]) and np.isnan(q_rra[1])  # these two agree with our NaN
    assert np.isnan(relevance_mass(attrs[1], masks[1]))
    assert np.isnan(relevance_rank(attrs[1], masks[1]))
    # The non-empty sample of the same batch is unaffected.
    assert q_rma[0] == pytest.approx(relevance_mass(attrs[0], masks[0]), abs=1e-6)


def test_negative_attributions_quantus_sums_signed_ours_refuses():
    attrs, masks = _cases(6, n=2)
    signed = [a - 0.2 for a in attrs]
    q = _quantus(quantus.RelevanceMassAccuracy, signed, masks)
    expected = [float(a[m].sum() / a.sum()) for a, m in zip(signed, masks)]
    np.testing.assert_allclose(np.asarray(q, float), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="ReLU"):
        relevance_mass(signed[0], masks[0])
    # After ReLU both agree again.
    relu = [np.maximum(a, 0.0) for a in signed]
    q = _quantus(quantus.RelevanceMassAccuracy, relu, masks)
    np.testing.assert_allclose(
        np.asarray(q, float), [relevance_mass(a, m) for a, m in zip(relu, masks)], atol=1e-6
    )


def test_tied_maxima_quantus_any_ours_first_in_c_order():
    a = np.full(SHAPE, 0.1)
    a[0, 0, 0] = a[5, 6, 7] = 1.0  # two tied maxima; (0, 0, 0) is first in C order
    m = np.zeros(SHAPE, bool)
    m[5, 6, 7] = True
    assert bool(_quantus(quantus.PointingGame, [a], [m])[0]) is True
    assert pointing_game(a, m, ISO, tolerance_mm=0.0) == 0.0


def test_all_zero_map_quantus_refuses_ours_is_nan():
    _, masks = _cases(7, n=1)
    zero = np.zeros(SHAPE)
    with pytest.raises(AssertionError, match="all equal to zero"):
        _quantus(quantus.RelevanceMassAccuracy, [zero], masks)
    assert np.isnan(relevance_mass(zero, masks[0]))
