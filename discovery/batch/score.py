"""``score_folder``: score every case of an input, record failures, then find patterns.

A bad case never stops the batch: its error is recorded as a ``failed`` row (a readable message
that names the problem, never a source path) and the next case runs.  After the cases, the
off-mask regions of the whole cohort are clustered once, and ``findings.csv`` and
``patterns.csv`` are written (temporary file, then rename).

Crash safety and resuming
-------------------------
Each case is written in two steps: its arrays (``cases/<case_id>.zarr.zip``: temporary file,
fsync, rename: :func:`data_tools.files.atomic_path`), then its rows and its ``manifest`` row in
one store transaction (:meth:`discovery.store.tables.ResultsStore.put_case`).  A case is
therefore either complete, with a manifest row, or absent from the manifest; a run killed at any point (even ``SIGKILL``) and
started again scores the missing cases and yields the same outputs as an uninterrupted run.
Temporary files of a killed run (``cases/.<case_id>.zarr.zip.<pid>.tmp``,
``.findings.csv.<pid>.tmp``, ``.patterns.csv.<pid>.tmp``, ``.store.json.<pid>.tmp``, and
the ``cases/.<case_id>.npz.<pid>.tmp`` and ``cases/.<case_id>.<pid>.tmp.npz`` of earlier
versions) are removed when the next batch starts, unless process ``pid`` is still running
and wrote the file in the last 15 minutes.

The manifest row holds three SHA-256 hex digests, ``input_hash``, ``model_hash`` and
``config_hash`` (:mod:`discovery.batch.manifest` says over what, and who computes them: on a
first run each case's worker, from the bytes it reads the case from).

Skip rule: a case is not recomputed when its manifest row has the same three hashes, status
``ok`` or ``no-mask``, and its arrays file exists; failed cases are always retried.  Cases in
the store that are no longer in the input are kept (and stay in the tables);
:attr:`BatchSummary.n_not_in_input` counts them.

Workers and determinism
-----------------------
With ``workers > 1`` the per-case work (read, analyse, write arrays) runs in a pool of
processes (forked on Linux, so that they start with torch and the model already loaded;
spawned elsewhere: :func:`discovery.parallel.start_method`), each using
``cpu_count // workers`` torch threads, while the parent alone writes to the store (one
writer).  On a first run into a results folder the workers start (and load the model)
while the parent prepares the batch.  A worker that dies
(killed, out of memory, a crash in native code) breaks the pool: the cases it was running
are each retried once, alone, in a fresh pool, and recorded as failed if that worker dies
too; the batch goes on.  (With ``workers=1`` the cases run in the calling process: such a
crash stops the batch, and the next run resumes before that case.)  With ``scheduler`` the
same per-case function runs on a Dask distributed cluster instead (paths are sent, not data:
the workers must see the inputs, the model and the results folder at the same paths; one
torch thread per worker thread unless ``torch_threads`` says otherwise); the calling process
still writes the store as results arrive, and a case whose workers keep dying is recorded
as failed after the scheduler's allowed failures (:mod:`discovery.batch.executors`).  The pattern
clustering runs once, in the calling process, after every case is done; the re-scoring of
its causal check runs case by case on the local pool's workers when there is a pool
(:func:`discovery.patterns.causal.pattern_effects`, ``run``), else in the calling process.  The tables do not
depend on the number of workers, on the order cases finish in, or on resuming: rows are
sorted by their keys, floats are written as ``%.6g`` and no timestamp is in them
(``scored_at`` and ``finished_at`` stay in the store).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from data_tools.cases import CaseSpec, discover_cases, read_case, read_labels
from data_tools.memory import DEFAULT_MAX_BYTES
from data_tools.errors import ModelError, safe_error
from data_tools.files import atomic_path
from data_tools.volume import Mask, Volume, spacing_from_affine
from discovery.batch.executors import (
    WORKER_DIED,
    WORKER_KILLED,
    ExecutorFactory,
    dask_client,
    run_dask,
    run_pool,
)
from discovery.batch.manifest import (
    FileMemo,
    HashingReader,
    case_config_hash,
    case_input_hash,
)
from discovery.batch.readahead import ReadAhead
from discovery.batch.rows import annotation_rows, region_deep, result_rows
from discovery.batch.tempfiles import remove_stale_temp_files
from discovery.model.compiled import STAGES
from discovery.model.external import load_any_model
from discovery.parallel import process_pool
from discovery.patterns.causal import CaseRunner, pattern_effects, run_here
from discovery.patterns.clustering import PatternSettings, cluster_regions
from discovery.explain.methods import FUSED_METHODS, FUSION_LAYERS, method_layer
from discovery.pipeline import (CaseResult, ScoreSettings, analyze_scan, resolve_map,
                                verdict_rule_meta)
from discovery.store.arrays import (case_file, ct_int16, flatten_outside_air, load_case_arrays,
                                    save_case_arrays)
from discovery.store.tables import ResultsStore

__all__ = ["BatchOptions", "BatchSummary", "score_folder", "write_tables", "recluster",
           "safe_error", "read_labels", "case_input_hash", "case_config_hash", "WORKER_DIED",
           "WORKER_KILLED"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BatchSummary:
    """What a batch did: counts and wall time (s).

    The counts cover every case of the input, skipped ones included (from their stored
    results); ``n_skipped`` says how many of them were not recomputed."""

    n_cases: int
    n_ok: int
    n_failed: int
    n_no_mask: int
    n_nodules: int
    n_regions: int
    n_clusters: int
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    layouts: dict[str, int] = field(default_factory=dict)  # cases per input layout
    n_skipped: int = 0  # cases unchanged since an earlier run (counted above, not recomputed)
    n_not_in_input: int = 0  # cases in the store but not in this input (kept)
    store: str = "discovery.sqlite"  # where the tables are (file name, or URL without password)


def _feature_layer(settings: ScoreSettings, card) -> str:
    """The layer whose activations are the regions' ``deep`` features."""
    if settings.method in FUSED_METHODS:
        return (settings.layer or "+".join(FUSION_LAYERS)).split("+")[-1].strip()
    return settings.layer or card.gradcam_layer


# -- one case ----------------------------------------------------------------------------
#: "case" (the cases row), "nodules", "regions", "annotations"; "input_hash" when the worker
#: hashed the inputs it read (else the calling process hashes them)
Payload = dict[str, Any]


def _failed(spec: CaseSpec, message: str) -> Payload:
    return {"case": {"case_id": spec.case_id, "status": "failed", "error": message,
                     "source_kind": spec.image_kind, "layout": spec.layout},
            "nodules": [], "regions": [], "annotations": []}


def _compute_case(spec: CaseSpec, model, card, results_dir: Path, settings: ScoreSettings,
                  max_bytes: int | None, input_path: Path | str,
                  ahead: ReadAhead | None = None) -> Payload:
    """Read, analyse and write the arrays of one case; its rows for the store and its
    ``input_hash`` (from the bytes read: :class:`discovery.batch.manifest.HashingReader`).  A failure to read or
    analyse the case becomes a ``failed`` payload with a safe message.

    A DICOM series is read as int16 HU where that is exact (almost always: integer rescale
    values), which is also the case file's CT: 2 bytes a voxel instead of float32's 4 and
    a second int16 copy.  A scan read as float32 is released once analysed, before the
    case file is written: the file keeps its int16 rounding
    (:func:`~discovery.store.arrays.ct_int16`), and holding both through the write would
    add 4 bytes a voxel to the peak (300 MiB on a 512 x 512 x 300 scan).  The case may
    have been read already, by *ahead* (:mod:`discovery.batch.readahead`)."""
    reader = HashingReader(spec, results_dir, max_bytes)
    try:
        case = ((ahead is not None and ahead.take(spec, reader))
                or read_case(spec, max_bytes=max_bytes, read=reader, integer_hu=True))
        analysed = _analyse_case(spec, case, model, card, settings)
        del case                                  # a float32 scan: freed here (docstring)
        payload = _write_case(spec, analysed, results_dir)
    except Exception as exc:  # noqa: BLE001 -- a batch records every failure and goes on
        message = safe_error(exc, input_path, spec.image, spec.mask)
        # no traceback in the log: frames and messages of third-party code may quote paths
        log.warning("case %s failed: %s", spec.case_id, message)
        payload = _failed(spec, message)
    payload["input_hash"] = reader.input_hash()
    return payload


@dataclass
class _Analysed:
    """What :func:`_write_case` needs of an analysed case; the scan itself only as the int16
    CT of its case file."""

    result: CaseResult
    ct: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    nodules: tuple
    mask_source: str


def _analyse_case(spec: CaseSpec, case, model, card, settings: ScoreSettings) -> _Analysed:
    """Analyse a case read into memory; the int16 CT of its case file (the air outside the
    patient flattened unless ``settings.lossless_ct``).  Consumes *case*: a scan read as
    int16 HU becomes that CT (no copy), flattened in place (on torch's threads)."""
    from torch import get_num_threads  # loaded with the model

    volume, mask = case.volume, case.mask
    result = analyze_scan(volume, mask, model, card, case_id=spec.case_id, settings=settings)
    ct = volume.array if volume.array.dtype == np.int16 else ct_int16(volume.array)
    if not settings.lossless_ct:
        flatten_outside_air(ct, keep=[n.box for n in result.nodules], out=ct,
                            threads=get_num_threads())
    return _Analysed(
        result=result, ct=ct,
        mask=(mask.array if mask is not None   # Mask arrays are int16 already: no copy
              else np.zeros(volume.shape, np.int16)).astype(np.int16, copy=False),
        affine=volume.affine, nodules=case.nodules, mask_source=case.mask_source)


def _write_case(spec: CaseSpec, case: _Analysed, results_dir: Path) -> Payload:
    """Write the case file of an analysed case; its rows for the store."""
    result = case.result
    arrays = save_case_arrays(
        results_dir, spec.case_id, ct=case.ct, mask=case.mask,
        attribution=result.attribution, region_map=result.region_map, affine=case.affine,
        # row k-1: layer activations pooled in region k of region_map (case_region order)
        region_deep=region_deep(result),
    )
    nodules, regions = result_rows(result)
    status = "ok" if result.status == "ok" else "no-mask"
    return {"case": {"case_id": spec.case_id, "status": status,
                     "error": "" if status == "ok" else result.status.split(": ", 1)[-1],
                     "n_nodules": len(nodules), "shape": list(case.ct.shape),
                     "spacing_mm": [round(s, 4) for s in spacing_from_affine(case.affine)],
                     "source_kind": spec.image_kind, "layout": spec.layout,
                     "mask_source": case.mask_source, "arrays": arrays},
            "nodules": nodules, "regions": regions,
            "annotations": annotation_rows(spec.case_id, case.nodules)}


#: per worker thread: (model folder, weights SHA-256) -> (model, card)
_WORKER_MODELS = threading.local()


def _compiled_serves(settings: ScoreSettings) -> bool:
    """Whether the compiled network (:mod:`discovery.model.compiled`) has every layer the
    attributions of *settings* need: the CAM layers named are among its stages."""
    if settings.layer is None:
        return True
    return all(part.strip() in STAGES for part in str(settings.layer).split("+"))


def _worker_model(model_dir: str | None, threads: int, weights_sha256: str | None,
                  compiled: bool = True):
    """The model of this worker thread, loaded once (a Dask worker may run several cases at
    once, and the attribution hooks are registered on the module), with *threads* torch
    threads; it must have the weights the batch uses (*weights_sha256*).  *compiled*: the
    model folder's compiled copy where it has one (:func:`_compiled_serves`)."""
    cache = _WORKER_MODELS.__dict__
    key = (model_dir, weights_sha256, compiled)
    import torch

    if torch.get_num_threads() != threads:  # also in a worker forked from a parent that had
        torch.set_num_threads(threads)       # loaded this model with other settings
    if key not in cache:
        model, card = load_any_model(model_dir, compiled=compiled)
        if weights_sha256 is not None and card.weights_sha256 != weights_sha256:
            raise ModelError(
                f"the model read on this worker has weights {card.weights_sha256[:12]}..., "
                f"but the batch uses {weights_sha256[:12]}...; workers must see the same files "
                "(the same model folder) as the machine that runs the batch", path=model_dir)
        cache[key] = (model, card)
    return cache[key]


def _work(spec: CaseSpec, model_dir: str | None, results_dir: Path, settings: ScoreSettings,
          max_bytes: int | None, input_path: Path | str, threads: int,
          weights_sha256: str | None = None) -> Payload:
    """One case in a worker (a pool process or a Dask worker thread), with the worker's
    model (:func:`_worker_model`); a model with other weights than the batch's makes the
    case fail with a message saying so."""
    model, card = _worker_model(model_dir, threads, weights_sha256, _compiled_serves(settings))
    return _compute_case(spec, model, card, results_dir, settings, max_bytes, input_path)


def _warm_worker(model_dir: str | None, threads: int, weights_sha256: str | None,
                 compiled: bool = True) -> None:
    """Load the worker's model ahead of its first case (errors are left to the cases)."""
    try:
        _worker_model(model_dir, threads, weights_sha256, compiled)
    except Exception:  # noqa: BLE001 -- the cases report it, with their own messages
        pass


def _stored_case(results_dir: str | Path, case_id: str):
    """``(Volume, Mask, region_map)`` of a stored case (the causal check's loader)."""
    a = load_case_arrays(results_dir, case_id)
    affine = a["affine"]
    return (Volume(a["ct"].astype(np.float32), affine), Mask(a["mask"], affine),
            a["region_map"])


def _causal_work(step: Callable, case_id: str, rows: pd.DataFrame, options: dict,
                 model_dir: str | None, results_dir: Path, threads: int,
                 weights_sha256: str | None):
    """One case's step of the causal check (:func:`discovery.patterns.causal.case_edits`,
    or another step of that module) in a worker process."""
    model, card = _worker_model(model_dir, threads, weights_sha256)
    return step(case_id, rows, load=functools.partial(_stored_case, results_dir), model=model,
                card=card, **options)


def _pool_runner(pool, args: tuple, model, card, results_dir: Path):
    """A :data:`discovery.patterns.causal.CaseRunner` on the worker pool of a batch (*args*: model
    folder, results folder, threads, weights hash); when the pool fails, the steps run here
    (same results)."""
    def run(step, jobs):
        try:
            futures = [pool.submit(_causal_work, step, case_id, rows, options, *args)
                       for case_id, rows, options in jobs]
            return [f.result() for f in futures]
        except BrokenProcessPool:
            log.warning("a worker process died during the causal check; finishing it in the "
                        "main process")
        return run_here(functools.partial(_stored_case, results_dir), model, card)(step, jobs)
    return run


def recluster(store: ResultsStore, settings: PatternSettings = PatternSettings(), *,
              model=None, card=None, results_dir: str | Path | None = None,
              run: CaseRunner | None = None) -> int:
    """Cluster all off-mask regions in the store; return the number of clusters.

    With ``model``, ``card`` and ``results_dir``, every cluster also gets its causal check
    and the nodules their shortcut flags (:func:`discovery.patterns.causal.pattern_effects`), scans
    read back from ``results_dir/cases/<case_id>.zarr.zip``; *run* computes its per-case steps
    elsewhere (e.g. on the batch's worker pool).
    """
    regions = store.regions()
    # stored with the patterns, the settings (and with them the clustering's descriptors) they
    # were made with: `python -m discovery.batch.current` says a folder clustered otherwise is
    # not current
    made_with = repr(settings)
    if regions.empty:
        store.set_patterns(regions.assign(cluster=[], embedding_x=[], embedding_y=[]),
                           pd.DataFrame(columns=["cluster"]), settings=made_with)
        return 0
    regions = regions.drop(columns=["cluster", "embedding_x", "embedding_y"])
    labels = store.labels()
    if len(labels):  # the truth-enrichment columns, where labels are known
        regions = regions.merge(labels, on=["case_id", "nodule_id"], how="left")
    clustered, clusters = cluster_regions(regions, settings=settings)
    flags = None
    if model is not None and card is not None and results_dir is not None and len(clusters):
        clusters, flags = pattern_effects(
            clustered, clusters, load=functools.partial(_stored_case, results_dir), model=model,
            card=card, seed=settings.seed, run=run, nodules=store.findings())
    store.set_patterns(clustered, clusters, flags, settings=made_with)
    return int(len(clusters))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def write_tables(store: ResultsStore, results_dir: Path) -> None:
    """Write ``findings.csv`` and ``patterns.csv`` from the store (rows sorted by their keys,
    floats as ``%.6g``, no timestamps: the same results give the same bytes; each written
    to a temporary file, then renamed)."""
    _write_csv(store.findings(), results_dir / "findings.csv")
    clusters = store.clusters()
    clusters["exemplars"] = [";".join(x) for x in clusters["exemplars"]]
    _write_csv(clusters, results_dir / "patterns.csv")


def _unchanged(store: ResultsStore, results_dir: Path) -> dict[str, tuple]:
    """``case_id -> (input_hash, model_hash, config_hash, status)`` of the manifest rows
    that may be skipped (status ok / no-mask, arrays file present)."""
    out = {}
    for r in store.manifest().itertuples():
        if r.status in ("ok", "no-mask") and case_file(results_dir, r.case_id) is not None:
            out[r.case_id] = (r.input_hash, r.model_hash, r.config_hash, r.status)
    return out


# -- the batch ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchOptions:
    """How :func:`score_folder` runs a batch: its keyword options, checked.

    Attributes
    ----------
    model_dir : path, optional
        Model folder, MONAI bundle folder, TorchScript file or module folder
        (:func:`discovery.model.external.load_any_model`); default the committed demo model.
    settings : ScoreSettings
        Per-case analysis settings (part of each case's ``config_hash``).
    pattern_settings : PatternSettings
        Cohort-level clustering settings (not hashed: the clustering runs after every batch).
    labels : path, optional
        Known true labels (:func:`read_labels`), stored with the results; the pattern
        clusters then also report enrichment against the true label.
    layout : str
        Input layout (:data:`data_tools.layouts.LAYOUTS`; ``"auto"`` recognises it).
    max_bytes : int or None
        Refuse a scan whose float32 volume would be larger (checked from the headers); also
        the most input bytes a worker holds in memory to read a case's files once.
    workers : int
        Processes scoring cases at once (1: in this process).
    executor_factory : callable(n_workers) -> Executor, optional
        Makes the worker pools when ``workers > 1`` (default:
        :func:`discovery.parallel.process_pool`); for tests and custom pools.
    scheduler : str, distributed.Client or cluster, optional
        Score the cases on a Dask distributed cluster instead: a scheduler address such as
        ``tcp://host:8786``, a ``Client`` (left open) or a cluster object such as
        ``distributed.LocalCluster`` (:mod:`discovery.batch.executors`: the workers must see
        the inputs, the model and the results folder at the same paths).  Not with
        ``workers > 1``.
    torch_threads : int, optional
        Torch threads of each worker (default: 1 per Dask worker thread; ``cpu_count //
        workers`` in the local pool; with one worker, in this process, torch's own setting,
        set to *torch_threads* for the call and restored after).
    store_url : str, optional
        Keep the results tables on this PostgreSQL server (``postgresql://...``; see
        :class:`discovery.store.tables.ResultsStore`) instead of ``discovery.sqlite``.

    Raises
    ------
    ValueError
        ``workers`` or ``torch_threads`` below 1, or both ``workers > 1`` and a
        ``scheduler``.
    """

    model_dir: str | Path | None = None
    settings: ScoreSettings = ScoreSettings()
    pattern_settings: PatternSettings = PatternSettings()
    labels: str | Path | None = None
    layout: str = "auto"
    max_bytes: int | None = DEFAULT_MAX_BYTES
    workers: int = 1
    executor_factory: ExecutorFactory | None = None
    scheduler: Any = None
    torch_threads: int | None = None
    store_url: str | None = None

    def __post_init__(self):
        if int(self.workers) < 1:
            raise ValueError(f"workers must be at least 1; received {self.workers!r}")
        if self.scheduler is not None and int(self.workers) != 1:
            raise ValueError(
                "workers and scheduler are exclusive: give workers (a local process pool) or "
                f"a Dask scheduler, not both; received workers={self.workers!r}")
        if self.torch_threads is not None and int(self.torch_threads) < 1:
            raise ValueError(f"torch_threads must be at least 1; received {self.torch_threads!r}")

    @property
    def n_workers(self) -> int:
        return int(self.workers)

    @property
    def threads(self) -> int:
        """Torch threads of each local worker process."""
        return int(self.torch_threads or max(1, (os.cpu_count() or 1) // self.n_workers))


@dataclass
class _Plan:
    """What a batch does with the cases of its input (:meth:`_Batch.plan`)."""

    specs: list[CaseSpec]
    skip: list[CaseSpec]        # unchanged since an earlier run: not recomputed
    todo: list[CaseSpec]
    previous: dict[str, tuple]  # skippable manifest rows (:func:`_unchanged`)
    input_hashes: dict[str, str]  # hashed here: the cases that might be skipped
    config_hashes: dict[str, str]
    n_not_in_input: int


@dataclass
class _Batch:
    """One :func:`score_folder` call: the state its steps (plan, run, finish) share."""

    input_path: str | Path
    results_dir: Path
    opts: BatchOptions
    model: Any
    card: Any
    store: ResultsStore
    client: Any = None
    progress: Progress | None = None
    compute: Callable[..., Payload] | None = None
    kept: list = field(default_factory=list)  # the local pool, kept running after the cases
    ahead: ReadAhead | None = None  # the first case, read ahead (one worker only)
    memo: FileMemo = field(default_factory=dict)
    done: int = 0  # cases finished or skipped
    status: dict[str, str] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def task(self) -> tuple:
        """The arguments of the per-case worker function after the case (:func:`_work`)."""
        model_dir = None if self.opts.model_dir is None else str(self.opts.model_dir)
        return (model_dir, self.results_dir, self.opts.settings, self.opts.max_bytes,
                self.input_path)

    def start(self, specs: list[CaseSpec], labels) -> None:
        """Prepare the store; on a first run into the folder, start the local workers (they
        load the model while the cases are planned)."""
        remove_stale_temp_files(self.results_dir)
        if labels is not None:
            self.store.set_labels(labels)
        card, settings = self.card, self.opts.settings
        layer = method_layer(self.model, settings.method, settings.layer)  # ValueError if unknown
        self.store.set_meta(
            model_sha256=card.weights_sha256, roi_size_vox=list(card.roi_size_vox),
            roi_spacing_mm=list(card.roi_spacing_mm),
            # the maps' layer ("input" for IG / Occlusion), the regions' deep features' layer
            gradcam_layer=layer, feature_layer=_feature_layer(settings, card),
            method=settings.method, hu_window=list(card.hu_window), threshold=card.threshold,
            **verdict_rule_meta(card, settings))
        n = min(self.opts.n_workers, len(specs))
        first_run = specs and self.store.manifest().empty
        if self.opts.n_workers > 1 and self.client is None and first_run:
            warm = (self.opts.executor_factory or process_pool)(n)
            self.kept.append(warm)
            for _ in range(n):
                warm.submit(_warm_worker, self.task[0], self.opts.threads, card.weights_sha256,
                            _compiled_serves(settings))

    def plan(self, specs: list[CaseSpec]) -> _Plan:
        """Decide which cases to skip: those whose manifest row may be skipped and whose
        inputs, model and settings hash as recorded there.  Only those cases are hashed
        here; the others are hashed by their worker as it reads them."""
        previous = _unchanged(self.store, self.results_dir)
        config = {s.case_id: case_config_hash(s, settings=self.opts.settings,
                                              max_bytes=self.opts.max_bytes, card=self.card)
                  for s in specs}
        hashes = {s.case_id: case_input_hash(s, exclude=self.results_dir, memo=self.memo)
                  for s in specs if s.case_id in previous}
        skip = [s for s in specs if s.case_id in previous and previous[s.case_id][:3]
                == (hashes[s.case_id], self.card.weights_sha256, config[s.case_id])]
        skipped_ids = {s.case_id for s in skip}
        stored = set(self.store.query("SELECT case_id FROM cases")["case_id"])
        n_not_in_input = len(stored - {s.case_id for s in specs})
        if n_not_in_input:
            log.info("%d case(s) in the results folder are not in this input; kept",
                     n_not_in_input)
        return _Plan(specs, skip, [s for s in specs if s.case_id not in skipped_ids], previous,
                     hashes, config, n_not_in_input)

    def run(self, plan: _Plan, stack: ExitStack) -> None:
        """Score the cases to do and store each as it finishes (after the skipped ones)."""
        for spec in plan.skip:
            self.status[spec.case_id] = plan.previous[spec.case_id][3]
            self._advance(plan, spec)
        for spec, payload in self._finished(plan.todo, stack):
            row = payload["case"]
            input_hash = (payload.get("input_hash") or plan.input_hashes.get(spec.case_id)
                          or case_input_hash(spec, exclude=self.results_dir, memo=self.memo))
            self.store.put_case(row, payload["nodules"], payload["regions"],
                                payload["annotations"],
                                manifest={"input_hash": input_hash,
                                          "model_hash": self.card.weights_sha256,
                                          "config_hash": plan.config_hashes[spec.case_id]})
            self.status[spec.case_id] = row["status"]
            if row["status"] == "failed":
                self.failed.append((spec.case_id, row["error"]))
            self._advance(plan, spec)

    def _advance(self, plan: _Plan, spec: CaseSpec) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(plan.specs), spec.case_id)

    def _fail(self, spec: CaseSpec, problem: BaseException | str) -> Payload:
        message = (problem if isinstance(problem, str)
                   else safe_error(problem, self.input_path, spec.image, spec.mask))
        log.warning("case %s failed: %s", spec.case_id, message)
        return _failed(spec, message)

    def _finished(self, todo: list[CaseSpec], stack: ExitStack):
        """``(spec, payload)`` of every case of *todo*, as they finish: on the Dask cluster,
        in this process (one worker), or in the local pool."""
        opts, work = self.opts, self.compute or _work
        if self.client is not None:
            run = uuid.uuid4().hex[:8]  # one batch's tasks never stand for another's
            keys = {s.case_id: f"score-{s.case_id}-{run}" for s in todo}
            return stack.enter_context(closing(run_dask(
                todo, work, (*self.task, int(opts.torch_threads or 1), self.card.weights_sha256),
                self.client, keys, self._fail)))
        if opts.n_workers == 1:
            if opts.torch_threads is not None:
                import torch

                stack.callback(torch.set_num_threads, torch.get_num_threads())
                torch.set_num_threads(int(opts.torch_threads))
            return ((s, _compute_case(s, self.model, self.card, *self.task[1:], self.ahead))
                    for s in todo)
        first = self.kept.pop() if self.kept else None
        return run_pool(todo, work, (*self.task, opts.threads, self.card.weights_sha256),
                        max(1, min(opts.n_workers, len(todo))),
                        opts.executor_factory or process_pool, self._fail, keep=self.kept,
                        first=first)

    def finish(self) -> tuple[int, int, int]:
        """Cluster the cohort's regions (the causal check on the pool when there is one) and
        write the tables; ``(n_nodules, n_regions, n_clusters)`` of this input's cases."""
        ids = sorted(self.status)
        counts = []
        for table in ("nodules", "regions"):
            sql = (f"SELECT COUNT(*) AS n FROM {table} WHERE case_id IN "
                   f"({', '.join('?' * len(ids))})")
            counts.append(int(self.store.query(sql, ids)["n"].iloc[0]) if ids else 0)
        # the pool, its workers' models loaded, also runs the causal check's cases
        runner = (_pool_runner(self.kept[0], (self.task[0], self.results_dir, self.opts.threads,
                                              self.card.weights_sha256),
                               self.model, self.card, self.results_dir)
                  if self.kept and self.compute is None else None)
        n_clusters = recluster(self.store, self.opts.pattern_settings, model=self.model,
                               card=self.card, results_dir=self.results_dir, run=runner)
        for pool in self.kept:  # the workers exit while the tables are written
            pool.shutdown(wait=False, cancel_futures=True)
        write_tables(self.store, self.results_dir)
        return counts[0], counts[1], n_clusters

    def summary(self, plan: _Plan, counts: tuple[int, int, int], seconds: float) -> BatchSummary:
        status = list(self.status.values())
        specs = plan.specs
        return BatchSummary(
            n_cases=len(specs), n_ok=status.count("ok"), n_failed=status.count("failed"),
            n_no_mask=status.count("no-mask"), n_nodules=counts[0], n_regions=counts[1],
            n_clusters=counts[2], seconds=seconds, failed=sorted(self.failed),
            layouts={k: sum(s.layout == k for s in specs)
                     for k in sorted({s.layout for s in specs})},
            n_skipped=len(plan.skip), n_not_in_input=plan.n_not_in_input,
            store=self.store.location)


def score_folder(
    input_path: str | Path,
    results_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    settings: ScoreSettings = ScoreSettings(),
    pattern_settings: PatternSettings = PatternSettings(),
    labels: str | Path | None = None,
    layout: str = "auto",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
    workers: int = 1,
    executor_factory: ExecutorFactory | None = None,
    scheduler: Any = None,
    torch_threads: int | None = None,
    store_url: str | None = None,
    read_ahead: ReadAhead | None = None,
    _compute: Callable[..., Payload] | None = None,
) -> BatchSummary:
    """Score every case under *input_path* into *results_dir*, skipping the cases an earlier
    run already scored from the same inputs, model and settings (module docstring).

    Parameters
    ----------
    input_path : path
        A folder of case folders, one case folder, or a manifest CSV (see
        :func:`data_tools.cases.discover_cases`).
    results_dir : path
        Created if needed; holds ``discovery.sqlite`` (or ``store.json``, see *store_url*),
        ``findings.csv``, ``patterns.csv`` and ``cases/<case_id>.zarr.zip``.
    model_dir, settings, pattern_settings, labels, layout, max_bytes, workers, \
executor_factory, scheduler, torch_threads, store_url
        How the batch runs: see :class:`BatchOptions`.
    progress : callable(done, total, case_id), optional
        Called once per case (skipped cases first), as cases finish.
    read_ahead : ReadAhead, optional
        From :func:`discovery.batch.readahead.start_read_ahead` on the same input: its cases,
        and its first case read (one worker); stopped when the batch ends.
    _compute : callable, optional
        For tests only: runs in place of the per-case worker function (``_work``'s
        signature) in the pool or on the cluster.

    Returns
    -------
    BatchSummary
    """
    t0 = time.perf_counter()
    opts = BatchOptions(model_dir=model_dir, settings=settings,
                        pattern_settings=pattern_settings, labels=labels, layout=layout,
                        max_bytes=max_bytes, workers=workers, executor_factory=executor_factory,
                        scheduler=scheduler, torch_threads=torch_threads, store_url=store_url)
    results_dir = Path(results_dir)
    if scheduler is not None:  # paths are sent to other machines: no relative ones
        input_path, results_dir = Path(input_path).resolve(), results_dir.resolve()
        opts = dataclasses.replace(
            opts, model_dir=None if model_dir is None else Path(model_dir).resolve())
    with ExitStack() as stack:  # a scheduler is reached before anything is read or written
        client = None if scheduler is None else stack.enter_context(dask_client(scheduler))
        if read_ahead is not None:
            stack.callback(read_ahead.close)
        model, card = load_any_model(opts.model_dir, compiled=_compiled_serves(opts.settings))
        opts = dataclasses.replace(opts, settings=resolve_map(opts.settings, card))
        if not _compiled_serves(opts.settings):     # the card's default map needs another layer
            model, card = load_any_model(opts.model_dir, compiled=False)
        specs = ((read_ahead and read_ahead.specs_for(input_path, layout))
                 or discover_cases(input_path, layout=layout))
        known = read_labels(labels) if labels is not None else None  # bad file: fail before scoring
        store = ResultsStore(results_dir, url=store_url)
        stack.callback(store.close)
        batch = _Batch(input_path, results_dir, opts, model, card, store, client, progress,
                       _compute, ahead=read_ahead if client is None and workers == 1 else None)
        stack.callback(lambda: [p.shutdown(wait=True, cancel_futures=True) for p in batch.kept])
        batch.start(specs, known)
        plan = batch.plan(specs)
        if read_ahead is not None and read_ahead.spec.case_id not in {s.case_id for s in plan.todo}:
            read_ahead.close()          # its case is skipped: its memory goes now
        batch.run(plan, stack)
        counts = batch.finish()
    return batch.summary(plan, counts, time.perf_counter() - t0)
