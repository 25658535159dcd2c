"""Train and evaluate the nodule classifier on a cohort the loaders read.

Labels come from each cohort's ``truth.csv`` (columns ``case_dir, nodule_label, malignant``;
``case_dir`` is the case folder's name under the cohort folder), a labels CSV keyed as the
findings are, or the LIDC-IDRI readers' malignancy ratings under a documented rule
(:mod:`discovery.model.labels`).

Protocol: patient-level split (train / validation / test, seeded), augmentation (flips along
the three axes, optional small rotations, intensity jitter), class-balanced loss, early
stopping on validation AUROC; the test split is touched once, at the end, and its figures go
into the model card.  Each input channel is standardised by the network with its mean and
standard deviation over the training split's ROIs, recorded on the card
(:func:`with_input_standardisation`).

Resumable: after every epoch the full training state (weights, optimiser, scheduler, random
generator, best weights so far, history) is written atomically to ``OUT/checkpoint.pt``.
``train_model(..., resume=True)`` continues from it and ends with exactly the weights an
uninterrupted run would have produced; the checkpoint is removed once the model is saved.
A checkpoint from other data or other settings is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from data_tools.checks import check_int
from data_tools.errors import DataError, file_label
from data_tools.files import atomic_path
from data_tools.volume import Mask, Volume
from discovery.model.card import ModelCard, build_network, save_model
from discovery.model.labels import (LabelCounts, LabelSource, LidcRatingRule, labelled_cases,
                                    parse_label_source)
from discovery.model.rois import nodule_sites, roi_input

__all__ = ["TrainSettings", "PRECISIONS", "RoiDataset", "collect_rois", "train_model", "evaluate",
           "expected_calibration_error", "input_channel_stats", "with_input_standardisation"]

log = logging.getLogger(__name__)


#: training arithmetic :attr:`TrainSettings.precision` accepts
PRECISIONS = ("float32", "bfloat16")
#: Memory layouts of the training passes (:attr:`TrainSettings.memory_format`).
MEMORY_FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    epochs: int = 40
    patience: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    threshold: float = 0.5
    rot90: bool = False  # random 90-degree rotations (slowed learning on the demo data; off)
    shift_vox: int = 0   # random shifts up to this many voxels (torch.roll; slowed learning; off)
    rotate_deg: float = 0.0  # random rotations about a random axis, up to this many degrees
    #: arithmetic of the training passes: "float32", or "bfloat16" (autocast: weights,
    #: optimiser and validation stay float32; on a CPU with AMX a training step is about 3x
    #: and an epoch about 1.7x as fast, on CPUs without native bfloat16 it is slower); the
    #: saved network is float32 either way
    precision: str = "float32"
    #: memory layout of the training passes: "channels_last" (channels-last 3-D, on which
    #: oneDNN's 3-D convolutions run about 1.6x as fast on a CPU, in float32 and bfloat16
    #: alike: ``benchmarks/training_step.py``) or "contiguous" (the layout before); the same
    #: arithmetic up to rounding, the saved network in the standard layout either way, and a
    #: checkpoint resumes in either
    memory_format: str = "channels_last"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainSettings.precision must be one of {', '.join(PRECISIONS)}; "
                             f"got {self.precision!r}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError("TrainSettings.memory_format must be one of "
                             f"{', '.join(MEMORY_FORMATS)}; got {self.memory_format!r}")


CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True, eq=False)
class RoiDataset:
    """ROIs of a cohort: ``x`` (N, C, z, y, x) float32 in [0, 1] (one channel per HU window
    of the model card, :func:`discovery.model.rois.network_input`), ``y`` (N,) int64,
    ``group`` (N,) case index for patient-level splits, ``case_ids`` pseudonymous per group;
    ``labelling``: where the labels came from, the counts kept and left out and the
    ``(case_id, nodule_id, label)`` of each ROI (:func:`collect_rois`; None otherwise)."""

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    case_ids: list[str]
    cohort_hash: str
    labelling: LabelCounts | None = None
    spacing_mm: np.ndarray | None = None      # (N, 3) the scan's (dz, dy, dx) of each ROI
    volume_mm3: np.ndarray | None = None      # (N,) each nodule's volume

    def domain(self, rows=None, *, source: str):
        """The :class:`~discovery.model.domain.TrainingDomain` of ROIs *rows* (default all);
        None when the spacings and volumes were not recorded."""
        from discovery.model.domain import equivalent_diameter_mm, training_domain

        if self.spacing_mm is None or self.volume_mm3 is None:
            return None
        rows = np.arange(len(self.y)) if rows is None else np.asarray(rows)
        return training_domain(spacings_mm=self.spacing_mm[rows],
                               diameters_mm=[equivalent_diameter_mm(v) for v in self.volume_mm3[rows]],
                               roi_inputs=self.x[rows], source=source)


def _label_source(labels, labels_csv) -> LabelSource:
    if labels is not None and labels_csv is not None:
        raise ValueError("give labels or labels_csv, not both")
    if labels_csv is not None:
        return LabelSource("csv", path=Path(labels_csv))
    if isinstance(labels, LabelSource):
        return labels
    if isinstance(labels, LidcRatingRule):
        return LabelSource("lidc", rule=labels)
    return parse_label_source(labels)


def collect_rois(cohorts, card: ModelCard, *, labels=None, labels_csv: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> RoiDataset:
    """Extract one preprocessed ROI per labelled nodule of one or several cohort folders.

    Parameters
    ----------
    cohorts : path or list of paths
        Cohort folders (case folders, with ``truth.csv`` for the default labels).
    labels : LabelSource, LidcRatingRule, str or None
        Where the labels come from (:mod:`discovery.model.labels`): None / ``"truth"``: each
        cohort's ``truth.csv``; ``"lidc[:malignant>=4,benign<=2]"`` or a
        :class:`LidcRatingRule`: the LIDC readers' malignancy ratings; another string: a
        labels CSV keyed by case and nodule as the findings are (for all cohorts).
    labels_csv : path, optional
        A labels CSV (the same as ``labels=LabelSource("csv", path=...)``).

    Returns
    -------
    RoiDataset
        ``labelling`` holds the counts kept and left out and the nodules used, in ROI order.

    Raises
    ------
    ValueError
        A rule the parser or :class:`LidcRatingRule` refuses.
    DataError
        A missing or malformed labels file, no labelled nodule left, fewer than 3 cases.
    """
    cohorts = [Path(c) for c in ([cohorts] if isinstance(cohorts, (str, Path)) else cohorts)]
    source = _label_source(labels, labels_csv)
    counts = LabelCounts(source)
    xs, cases, spacings, volumes = [], [], [], []
    for case in labelled_cases(cohorts, source, counts, progress=progress):
        for site in case.sites:
            xs.append(roi_input(case.volume, site.center_zyx, card))
            cases.append(case.case_id)
            spacings.append(case.volume.spacing_mm)
            volumes.append(site.volume_mm3)
    if not xs:
        hint = ("check the labels CSV" if source.kind != "lidc"
                else "no nodule was rated by the readers or every median fell between the "
                     "thresholds; loosen the rule")
        raise DataError(f"{counts.summary()}: no labelled nodule left to train on ({hint})")
    ys = [y for _, _, y in counts.nodules]
    case_ids = sorted(set(cases))
    if len(case_ids) < 3:
        raise DataError(f"training needs at least 3 cases for a patient-level split; found {len(case_ids)}")
    index = {cid: i for i, cid in enumerate(case_ids)}
    digest = hashlib.sha256("\n".join(case_ids).encode()).hexdigest()
    return RoiDataset(np.stack(xs).astype(np.float32), np.asarray(ys, np.int64),
                      np.asarray([index[c] for c in cases]), case_ids, digest, labelling=counts,
                      spacing_mm=np.asarray(spacings, float), volume_mm3=np.asarray(volumes, float))


def _synthetic_case_rois(seed: int, config, card: ModelCard, indices) -> list[tuple]:
    """``(case index, label, roi, spacing_mm, volume_mm3)`` for every nodule of the synthetic
    cases *indices*, in case order and, within a case, in :func:`nodule_sites` order."""
    from data_tools.synthetic import generate_case

    out = []
    for i in indices:
        c = generate_case(seed, config=config, index=i)
        volume = Volume(c.hu, c.affine)
        malignant = {n["label"]: int(n["malignant"]) for n in c.nodules}
        for site in nodule_sites(Mask(c.mask, c.affine)):
            out.append((i, malignant[site.label], roi_input(volume, site.center_zyx, card),
                        volume.spacing_mm, site.volume_mm3))
    return out


def synthetic_rois(seed: int, n_cases: int, card: ModelCard, *, config=None,
                   progress: Callable[[int, int], None] | None = None,
                   workers: int = 1) -> RoiDataset:
    """ROIs of a synthetic cohort generated in memory (no DICOM written).

    Case ``i`` is :func:`data_tools.synthetic.generate_case` ``(seed, config=config, index=i)``,
    the same phantom ``discovery sample`` would write; one ROI per nodule, labelled by the
    truth manifest.  Case ids are ``synthetic-s{seed}-{i:04d}``.

    Parameters
    ----------
    seed, n_cases : int
        Cohort seed and size (``n_cases >= 3`` for a patient-level split).
    card : ModelCard
        ROI size, spacing and HU window(s).
    config : data_tools.synthetic.SyntheticConfig, optional
        Cohort settings (default: ``SyntheticConfig()``, the sample cohort's).
    workers : int, optional
        Processes generating cases at once (cases ``k, k + workers, ...`` each); the result
        is the same as with one (same ROIs in the same order).  ``progress`` is then called
        as each worker's share finishes.
    """
    from data_tools.synthetic import SyntheticConfig

    n_cases = check_int("n_cases", n_cases, 3)
    workers = check_int("workers", workers, 1)
    config = SyntheticConfig() if config is None else config
    if workers == 1:
        rows = []
        for i in range(n_cases):
            rows += _synthetic_case_rois(seed, config, card, [i])
            if progress:
                progress(i + 1, n_cases)
    else:
        from discovery.parallel import process_pool

        shares = [list(range(k, n_cases, workers)) for k in range(workers)]
        rows, done = [], 0
        with process_pool(workers) as pool:
            for share, part in zip(shares, pool.map(_synthetic_case_rois, [seed] * workers,
                                                    [config] * workers, [card] * workers,
                                                    shares)):
                rows += part
                done += len(share)
                if progress:
                    progress(done, n_cases)
        rows.sort(key=lambda r: r[0])  # stable: a case's nodules keep their order
    case_ids = [f"synthetic-s{seed}-{i:04d}" for i in range(n_cases)]
    digest = hashlib.sha256(json.dumps([config.to_dict(), seed, n_cases], sort_keys=True,
                                       default=str).encode()).hexdigest()
    return RoiDataset(np.stack([r[2] for r in rows]).astype(np.float32),
                      np.asarray([r[1] for r in rows], np.int64),
                      np.asarray([r[0] for r in rows]), case_ids, digest,
                      spacing_mm=np.asarray([r[3] for r in rows], float),
                      volume_mm3=np.asarray([r[4] for r in rows], float))


def _split(n_groups: int, s: TrainSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(s.seed)
    order = rng.permutation(n_groups)
    n_test = max(1, int(round(n_groups * s.test_fraction)))
    n_val = max(1, int(round(n_groups * s.val_fraction)))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def _rotation_matrices(n: int, max_deg: float, gen: torch.Generator) -> torch.Tensor:
    """``(n, 3, 3)`` rotations about random unit axes by angles uniform in ±max_deg."""
    axis = torch.randn(n, 3, generator=gen)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-8)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_deg)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return torch.eye(3) + s * k + (1 - c) * (k @ k)   # Rodrigues' formula


def _rotate(x: torch.Tensor, max_deg: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each ROI ``(N, 1, z, y, x)`` about its centre (trilinear, border padding)."""
    theta = torch.cat([_rotation_matrices(x.shape[0], max_deg, gen), torch.zeros(x.shape[0], 3, 1)], 2)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def _augment(x: torch.Tensor, gen: torch.Generator, *, rot90: bool = False,
             shift_vox: int = 0, rotate_deg: float = 0.0) -> torch.Tensor:
    """Random flips along the three axes, optional 90-degree rotations (the ROI is isotropic,
    so all 48 symmetries of the cube are valid), optional small rotations about a random axis
    (up to ``rotate_deg``), optional shifts of up to ``shift_vox`` voxels, and intensity
    jitter.  The ROI is isotropic, so rotating on the voxel grid is a physical rotation."""
    if rotate_deg:
        x = _rotate(x, rotate_deg, gen)
    for i in range(x.shape[0]):
        sample = x[i]
        for axis in (1, 2, 3):
            if torch.rand(1, generator=gen) < 0.5:
                sample = torch.flip(sample, dims=(axis,))
        if rot90:
            k = int(torch.randint(0, 4, (1,), generator=gen))
            plane = [(1, 2), (1, 3), (2, 3)][int(torch.randint(0, 3, (1,), generator=gen))]
            sample = torch.rot90(sample, k, dims=plane)
        if shift_vox:
            shifts = tuple(int(v) for v in torch.randint(-shift_vox, shift_vox + 1, (3,), generator=gen))
            sample = torch.roll(sample, shifts=shifts, dims=(1, 2, 3))
        x[i] = sample
    scale = 1.0 + 0.05 * torch.randn(x.shape[0], 1, 1, 1, 1, generator=gen)
    shift = 0.02 * torch.randn(x.shape[0], 1, 1, 1, 1, generator=gen)
    return (x * scale + shift).clamp_(0.0, 1.0)


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Malignancy probability (class 1) for ROIs ``(N, C, z, y, x)``."""
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(x[i:i + batch_size])), 1)[:, 1]
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins on the predicted probability of class 1."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, sensitivity, specificity at *threshold*, ECE and counts."""
    y = np.asarray(y)
    pred = np.asarray(p) >= threshold
    both = len(np.unique(y)) == 2
    pos, neg = y == 1, y == 0
    return {
        "auroc": float(roc_auc_score(y, p)) if both else float("nan"),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float((~pred[neg]).mean()) if neg.any() else float("nan"),
        "ece": expected_calibration_error(y, p),
        "n": int(len(y)), "n_malignant": int(pos.sum()),
    }


def _labels_text(data: RoiDataset) -> str | None:
    """Where *data*'s labels came from (None for ROIs built otherwise)."""
    return data.labelling.source.describe() if data.labelling is not None else None


def _labels_record(data: RoiDataset) -> dict:
    """The card's ``training["labels"]``: the label source and its counts (empty without)."""
    c = data.labelling
    if c is None:
        return {}
    return {"labels": {"source": c.source.describe(), "n_malignant": c.malignant,
                       "n_benign": c.benign, "n_left_out": c.between + c.unrated,
                       "n_unmatched": c.unmatched,
                       "unreadable_cases": [{"case_id": cid, "why": why} for cid, why in c.failed]}}


def _settings_dict(settings: TrainSettings) -> dict:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write the training *state* to *path* atomically (a reader never sees half of it)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _windows_list(card: ModelCard) -> list[list[float]]:
    """The card's HU windows as JSON-like lists (what a checkpoint records)."""
    return [[float(v) for v in w] for w in card.windows]


def _load_checkpoint(path: Path, data: RoiDataset, settings: TrainSettings, card: ModelCard) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise DataError(f"checkpoint {file_label(path)} cannot be read ({type(exc).__name__}); "
                        "delete it to start over", path=path) from None
    expected = {"cohort": data.cohort_hash, "settings": _settings_dict(settings),
                "architecture": card.architecture, "windows": _windows_list(card),
                "labels": _labels_text(data)}
    for key, value in expected.items():
        # a checkpoint written before several windows existed had the default single window;
        # one written before the label sources existed is taken as made with today's labels
        found = state.get(key, {"windows": _windows_list(ModelCard()), "labels": value}.get(key))
        if key == "settings" and isinstance(found, dict):
            found = {"precision": "float32", **found}   # written before the setting existed
            # the layout changes the speed, not what is learnt: a checkpoint resumes in either
            found = {k: v for k, v in found.items() if k != "memory_format"}
            value = {k: v for k, v in value.items() if k != "memory_format"}
        if found != value:
            if isinstance(found, dict) and isinstance(value, dict):
                what = ", ".join(f"{k}: {found.get(k)!r} there, {value.get(k)!r} now"
                                 for k in sorted(set(found) | set(value)) if found.get(k) != value.get(k))
            else:
                what = {"cohort": "different case list",
                        "windows": f"HU windows {found} there, {value} now",
                        "labels": f"{found} there, {value} now"}.get(key, "differs")
            raise DataError(
                f"checkpoint {file_label(path)} was made with different {key} ({what}); "
                "delete it or train into another folder", path=path)
    return state


#: smallest per-channel standard deviation used to standardise an input channel: a channel
#: (nearly) constant over the training ROIs is not blown up by a tiny one
MIN_INPUT_STD = 0.01


def input_channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and standard deviation (at least :data:`MIN_INPUT_STD`) of each channel of ROIs
    ``(N, C, z, y, x)``."""
    x = np.asarray(x)
    mean, std = [], []
    for c in range(x.shape[1]):
        channel = x[:, c]
        mean.append(round(float(channel.mean(dtype=np.float64)), 6))
        std.append(round(max(float(channel.std(dtype=np.float64)), MIN_INPUT_STD), 6))
    return mean, std


def with_input_standardisation(card: ModelCard, x: np.ndarray) -> ModelCard:
    """*card* whose network standardises each input channel by its mean and standard
    deviation over the training ROIs *x* (``architecture["input_mean"]``, ``["input_std"]``);
    a card that already names them is returned unchanged.

    The window channels differ a lot in spread (over nodule ROIs, about 0.34 for ``lung``,
    0.09 for ``wide``, 0.01 for ``dense``): unstandardised, the widest-spread channel
    dominates the first convolution at initialisation, and a structure that shows in a
    low-spread channel only (a metal bead in ``wide`` or ``dense``) was not learned at all by
    a three-channel model in 25 epochs (docs/guide/models.md).  A single channel is
    rescaled by the first convolution's batch norm anyway, so this matters only with several.
    """
    arch = card.architecture
    if "input_mean" in arch or "input_std" in arch:
        return card
    mean, std = input_channel_stats(x)
    return replace(card, architecture={**copy.deepcopy(arch), "input_mean": mean,
                                       "input_std": std})


def train_model(data: RoiDataset, out_dir: str | Path, *, settings: TrainSettings = TrainSettings(),
                card: ModelCard = ModelCard(), resume: bool = False,
                progress: Callable[[int, int, dict], None] | None = None) -> ModelCard:
    """Train on *data*, select the epoch by validation AUROC, evaluate once on the test split,
    and save weights + model card to *out_dir*. Returns the saved card.

    With ``resume=True`` and an ``OUT/checkpoint.pt`` left by an interrupted run on the same
    data and settings, training continues after the last completed epoch.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    groups = _split(len(data.case_ids), settings)
    idx = {name: np.flatnonzero(np.isin(data.group, g)) for name, g in
           zip(("train", "val", "test"), groups)}
    card = with_input_standardisation(card, data.x[idx["train"]])
    if settings.precision == "bfloat16" and not _native_bfloat16():
        log.warning("training in bfloat16 on a CPU without native bfloat16 arithmetic: "
                    "expect it to be slower than float32")
    model = build_network(card).to(memory_format=MEMORY_FORMATS[settings.memory_format])
    y_tr = data.y[idx["train"]]
    counts = np.bincount(y_tr, minlength=2).astype(float)
    weight = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    best: tuple[float, int, dict | None] = (-math.inf, 0, None)
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    if resume and ckpt_path.is_file():
        best, history, start_epoch, elapsed = _resume(ckpt_path, data, settings, card, model,
                                                      opt, sched, gen)
    elif ckpt_path.is_file():
        log.info("ignoring %s (resume not requested); it will be overwritten", CHECKPOINT_NAME)
    t0 = time.perf_counter() - elapsed
    stopped = start_epoch > 0 and start_epoch - best[1] >= settings.patience
    for epoch in range(start_epoch, 0 if stopped else settings.epochs):
        losses = _train_epoch(model, data, idx["train"], gen, loss_fn, opt, settings)
        sched.step()
        val = evaluate(data.y[idx["val"]], predict_probabilities(model, data.x[idx["val"]]))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auroc": val["auroc"]})
        score = val["auroc"] if not np.isnan(val["auroc"]) else -float(np.mean(losses))
        if score > best[0]:
            best = (score, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
        _save_checkpoint(ckpt_path, {
            "cohort": data.cohort_hash, "settings": _settings_dict(settings),
            "architecture": card.architecture, "windows": _windows_list(card),
            "labels": _labels_text(data), "epoch": epoch + 1,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "generator": gen.get_state(),
            "best_score": best[0], "best_epoch": best[1], "best_model": best[2],
            "history": history, "seconds": time.perf_counter() - t0,
        })
        if progress:
            progress(epoch + 1, settings.epochs, history[-1])
        if epoch + 1 - best[1] >= settings.patience:
            log.info("early stop at epoch %d (best %d)", epoch + 1, best[1])
            break
    model = model.to(memory_format=torch.contiguous_format)   # saved and used as built
    model.load_state_dict(best[2])
    model.eval()
    card = _trained_card(model, card, data, settings, idx, groups, best_epoch=best[1],
                         history=history, t0=t0)
    saved = save_model(model, card, out)
    ckpt_path.unlink(missing_ok=True)
    return saved


def _native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX tiles or AVX512-BF16), as torch
    reports it; False when torch cannot say."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(getattr(torch, "cpu", None), name, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def _resume(ckpt_path: Path, data: RoiDataset, settings: TrainSettings, card: ModelCard,
            model, opt, sched, gen: torch.Generator) -> tuple[tuple, list[dict], int, float]:
    """Restore model, optimiser, scheduler and generator from the checkpoint in place; return
    ``(best, history, epochs done, seconds spent)``."""
    state = _load_checkpoint(ckpt_path, data, settings, card)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    best = (float(state["best_score"]), int(state["best_epoch"]), state["best_model"])
    history = list(state["history"])
    start_epoch, elapsed = int(state["epoch"]), float(state["seconds"])
    log.info("resuming after epoch %d", start_epoch)
    return best, history, start_epoch, elapsed


def _train_epoch(model, data: RoiDataset, train_idx: np.ndarray, gen: torch.Generator, loss_fn,
                 opt, settings: TrainSettings) -> list[float]:
    """One pass over the training ROIs in a random order, augmented; the batch losses."""
    model.train()
    order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
    losses = []
    for start in range(0, len(order), settings.batch_size):
        sel = order[start:start + settings.batch_size]
        xb = _augment(torch.from_numpy(data.x[sel].copy()), gen, rot90=settings.rot90,
                      shift_vox=settings.shift_vox, rotate_deg=settings.rotate_deg)
        xb = xb.contiguous(memory_format=MEMORY_FORMATS[settings.memory_format])
        with torch.autocast("cpu", dtype=torch.bfloat16,
                            enabled=settings.precision == "bfloat16"):
            logits = model(xb)
        loss = loss_fn(logits.float(), torch.from_numpy(data.y[sel]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _trained_card(model, card: ModelCard, data: RoiDataset, settings: TrainSettings, idx: dict,
                  groups, *, best_epoch: int, history: list[dict], t0: float) -> ModelCard:
    """*card* with the training record and the held-out metrics (test, then validation) of
    the selected *model*."""
    test = evaluate(data.y[idx["test"]], predict_probabilities(model, data.x[idx["test"]]),
                    settings.threshold)
    val = evaluate(data.y[idx["val"]], predict_probabilities(model, data.x[idx["val"]]),
                   settings.threshold)
    return replace(card, training={
        "seed": settings.seed, "epochs_run": len(history), "best_epoch": best_epoch,
        "settings": _settings_dict(settings),
        "cohort_case_list_sha256": data.cohort_hash, "n_cases": len(data.case_ids),
        "n_nodules": int(len(data.y)),
        "split": {k: {"n_cases": int(len(g)), "n_nodules": int(len(idx[k])),
                      "case_ids": sorted(data.case_ids[i] for i in g)}
                  for k, g in zip(("train", "val", "test"), groups)},
        "history": history, "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__, **_labels_record(data),
    }, metrics={"threshold": settings.threshold, "heldout_auroc": test["auroc"],
                "test": test, "validation": val},
        training_domain=_domain_record(data, idx["train"]))


def _domain_record(data: RoiDataset, rows) -> dict:
    """The training split's :class:`~discovery.model.domain.TrainingDomain` as a card dict
    (empty when the dataset did not record spacings and volumes)."""
    domain = data.domain(rows, source="discovery train: the training split's ROIs")
    return domain.to_dict() if domain is not None else {}
