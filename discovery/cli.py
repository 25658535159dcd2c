"""``discovery`` command line: sample | train | score | sanity | report | app | model.

Thin: every command parses its options, calls the library, draws progress with rich, and
prints a short summary.  Messages name cases by pseudonymous id only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

#: ``discovery train --lr`` default: ``TrainSettings.lr`` (a test checks they agree), written
#: here so that building the parser imports neither torch nor MONAI.
DEFAULT_LR = 1e-3

__all__ = ["main"]


class _LineProgress:
    """Stand-in for rich's bar when output is not a terminal: one line per update."""

    def __init__(self):
        self._tasks: dict[int, dict] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def console(self):
        return _console()

    def add_task(self, description, total=None, note=""):
        self._tasks[len(self._tasks)] = {"description": description, "total": total}
        return len(self._tasks) - 1

    def update(self, task, completed=None, total=None, note=""):
        t = self._tasks[task]
        if total is not None:
            t["total"] = total
        print(f"{t['description']}: {completed}/{t['total']} {note}".rstrip(), flush=True)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    if not sys.stdout.isatty():
        return _LineProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[note]}"), transient=False)


def _console():
    from rich.console import Console

    return Console(highlight=False)


def cmd_sample(args) -> int:
    from data_tools.errors import DataError
    from data_tools.synthetic import SyntheticConfig, generate_cohort

    try:
        config = SyntheticConfig.read(args.config) if args.config else SyntheticConfig()
    except ValueError as exc:
        raise DataError(str(exc)) from None
    with _progress() as bar:
        task = bar.add_task("generating cases", total=args.cases, note="")
        generate_cohort(Path(args.out), n_cases=args.cases, seed=args.seed, config=config,
                        workers=args.workers,
                        progress=lambda done, total: bar.update(task, completed=done))
    _console().print(f"wrote {args.cases} synthetic cases (seed {args.seed}) and truth.json")
    return 0


def cmd_train(args) -> int:
    from discovery.model.card import TRAINED_DEFAULT_MAP, ModelCard
    from discovery.model.train import TrainSettings, collect_rois, train_model

    card = ModelCard().with_windows(args.windows)
    if args.stages is not None:
        card.architecture["stages"] = args.stages
    if int(card.architecture.get("stages", 4)) >= 2:   # explained as the demo model is
        card = dataclasses.replace(card, default_map=TRAINED_DEFAULT_MAP)
    with _progress() as bar:
        task = bar.add_task("reading cases", total=None, note="")
        data = collect_rois(args.cohort, card, labels=args.labels,
                            progress=lambda d, t: bar.update(task, completed=d, total=t))
        bar.console.print(data.labelling.summary())
        settings = TrainSettings(seed=args.seed, epochs=args.epochs, patience=args.patience,
                                 lr=args.lr, rotate_deg=args.rotate_deg,
                                 precision=args.precision)
        task2 = bar.add_task("training", total=settings.epochs, note="")
        card = train_model(
            data, args.out, settings=settings, card=card, resume=args.resume,
            progress=lambda e, t, h: bar.update(
                task2, completed=e, note=f"loss {h['loss']:.3f}  val AUROC {h['val_auroc']:.3f}"))
    test = card.metrics["test"]
    _console().print(
        f"model saved. test split: AUROC {test['auroc']:.3f}, sensitivity {test['sensitivity']:.2f}, "
        f"specificity {test['specificity']:.2f}, ECE {test['ece']:.3f} on {test['n']} nodules")
    return 0


def cmd_sanity(args) -> int:
    from discovery.store.tables import sanity_summary

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    randomise = (None if args.randomise is None
                 else [m.strip() for m in args.randomise.split(",") if m.strip()])
    try:
        summary = _run_sanity(args, methods, randomise)
    except ValueError as exc:  # an unknown method or --layer, a bad option
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_sanity(summary.n_nodules, sanity_summary(summary.randomization, summary.perturbation))
    return 0


def _run_sanity(args, methods, randomise):
    from discovery.batch.sanity import run_sanity

    with _progress() as bar:
        task = bar.add_task("sanity checks", total=None, note="")
        return run_sanity(
            args.source, results_dir=args.out, model_dir=args.model, methods=methods,
            randomise=randomise, steps=args.steps, n_random=args.n_random, n_draws=args.draws,
            seed=args.seed, max_nodules=args.max_nodules, layer=args.layer,
            progress=lambda stage, d, t: bar.update(task, completed=d, total=t, note=stage))


def _print_sanity(n_nodules: int, table) -> None:
    """Per method: the verdict of the faithfulness rule (ROAD's MoRF-LeRF gap with imputed
    voxels, which decides), the randomisation Spearman, then the old measure for comparison."""
    from discovery.explain.catalog import map_label

    console = _console()
    console.print(f"{n_nodules} nodules. Faithfulness (decides): MoRF-LeRF gap of P(malignant) "
                  "with imputed voxels (ROAD) on the predicted-malignant nodules, against "
                  "random maps; randomisation: Spearman with the fully randomised model "
                  "(should be near 0).")
    for r in table.itertuples():
        line = f"  {map_label(r.method, r.layer):<27}"
        if r.n:
            line += (f" {r.status.upper():<12} gap {_num(r.road_gap)} (random "
                     f"{_num(r.road_gap_random)}), > 0 on {_pct(r.road_gap_positive)} of "
                     f"{r.n_malignant}")
        if r.spearman_fully_randomised == r.spearman_fully_randomised:  # not NaN
            line += f"; spearman {r.spearman_fully_randomised:.3f}"
        console.print(line)
    console.print("Old measure, for comparison (constant -850 HU eraser; its random voxel "
                  "orders delete fast because the speckle itself lowers the score):")
    for r in table.itertuples():
        if r.n:
            console.print(f"  {map_label(r.method, r.layer):<27} deletion AUC {_num(r.deletion_auc)} vs random "
                          f"{_num(r.deletion_auc_random)} (beats random on "
                          f"{_pct(r.beats_random)}); insertion {_num(r.insertion_auc)} vs "
                          f"{_num(r.insertion_auc_random)}")
    for r in table.itertuples():
        if r.n and r.status != "passes":
            console.print(f"[bold]{map_label(r.method, r.layer)} {r.verdict}.[/bold]")


def _num(value) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN != NaN


def _pct(value) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; received {value}")
    return value


def cmd_score(args) -> int:
    max_bytes = None if args.max_volume_gb <= 0 else int(args.max_volume_gb * 1024**3)
    ahead = None
    if args.workers == 1 and args.scheduler is None:
        # forked before torch is imported: the first case is read while the imports run
        from discovery.batch.readahead import start_read_ahead

        ahead = start_read_ahead(args.input, args.out, layout=args.layout, max_bytes=max_bytes)
    from discovery.batch.score import score_folder
    from discovery.pipeline import ScoreSettings

    console = _console()
    try:
        with _progress() as bar:
            task = bar.add_task("scoring", total=None, note="")
            summary = score_folder(
                args.input, args.out, model_dir=args.model,
                settings=ScoreSettings(method=args.method, layer=args.layer,
                                       lossless_ct=args.lossless_ct,
                                       verdict_rule=not args.threshold_verdicts),
                labels=args.labels, layout=args.layout, max_bytes=max_bytes,
                workers=args.workers, scheduler=args.scheduler, store_url=args.store,
                read_ahead=ahead,
                progress=lambda d, t, cid: bar.update(task, completed=d, total=t, note=cid))
    except (ConnectionError, ValueError) as exc:  # no scheduler; a bad --layer or option
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(summary.layouts) > 1 or "cases" not in summary.layouts:
        console.print("layouts: " + ", ".join(f"{k} {v}" for k, v in summary.layouts.items()))
    console.print(
        f"{_count(summary.n_cases, 'case')}: {summary.n_ok} scored, {summary.n_no_mask} without "
        f"mask, {summary.n_failed} failed; {_count(summary.n_nodules, 'nodule')}, "
        f"{_count(summary.n_regions, 'off-mask region')}, "
        f"{_count(summary.n_clusters, 'pattern cluster')}; {summary.seconds:.1f} s")
    console.print(f"{summary.n_skipped} skipped (unchanged since an earlier run into this "
                  f"results folder), {summary.n_cases - summary.n_skipped} scored now")
    if summary.n_not_in_input:
        console.print(f"{summary.n_not_in_input} case(s) in the results folder are not in this "
                      "input; their results are kept")
    for case_id, message in summary.failed:
        console.print(f"[red]failed[/red] {case_id}: {message}")
    console.print(f"wrote findings.csv and patterns.csv in the results folder; tables in "
                  f"{summary.store}")
    return 1 if summary.n_failed else 0


def _count(n: int, noun: str) -> str:
    """``"1 case"``, ``"2 cases"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_report(args) -> int:
    from discovery.report.write import write_report

    console = _console()
    if args.format == "dicom":
        from discovery.report.dicom import export_dicom

        if not args.input:
            print("error: --format dicom needs --input (the folder that was scored): the "
                  "exports reference the source series, whose UIDs the results do not keep",
                  file=sys.stderr)
            return 2
        done = export_dicom(args.results, args.input, args.out)
        n_files = sum(len(v) for v in done["exported"].values())
        console.print(f"DICOM export: {len(done['exported'])} case(s), {n_files} files "
                      "(de-identified CT series, SEG, Parametric Map, TID 1500 SR per case)")
        for case_id, reason in done["skipped"].items():
            console.print(f"skipped {case_id}: {reason}")
        for case_id, message in done["failed"].items():
            console.print(f"[red]failed[/red] {case_id}: {message}")
        return 1 if done["failed"] else 0
    path = write_report(args.results, args.out, fmt=args.format)
    console.print(f"wrote {args.format} report ({path.stat().st_size // 1024} KiB)")
    return 0


def cmd_app(args) -> int:
    import subprocess

    from discovery.store.backends import store_exists

    entry = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
    results = Path(args.results).resolve()
    if not store_exists(results):
        print("error: no results store (discovery.sqlite or store.json) in that folder; run "
              "`discovery score` first", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry),
           "--server.address", args.host, "--server.port", str(args.port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal",
           # kept explicit so that no config file can turn them off: cross-site request
           # forgery protection on; the app takes no uploads, so the smallest upload limit
           "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
           "--server.maxUploadSize", "1",
           "--", "--results", str(results)]
    checks = _start_background_sanity(args, results)
    print(f"review app: http://{args.host}:{args.port}", flush=True)
    try:
        return subprocess.call(cmd)
    finally:
        if checks is not None and checks.poll() is None:
            checks.terminate()        # the app is gone: its next start resumes the checks


def _start_background_sanity(args, results: Path):
    """The background sanity checks of ``discovery app --sanity`` (None when not asked or
    nothing needs to run)."""
    if not args.sanity:
        return None
    from discovery import background

    from discovery.explain.catalog import METHODS

    methods = [m.strip() for m in args.sanity.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: --sanity: unknown method(s) {', '.join(unknown)}; available: "
                         f"{', '.join(METHODS)}")
    proc = background.start(results, methods=methods, max_nodules=args.sanity_max_nodules,
                            model_dir=args.model, report=args.report)
    if proc is not None:
        print(f"faithfulness checks ({', '.join(methods)}) running in the background; the "
              f"Overview shows their progress (log: {results.name}/logs/sanity.log)", flush=True)
    return proc


def build_parser() -> argparse.ArgumentParser:
    """The ``discovery`` command line: one sub-command per task (docs/guide/install-and-commands.md)."""
    p = argparse.ArgumentParser(prog="discovery", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_sample, _add_train, _add_sanity, _add_score, _add_report, _add_app,
                _add_model):
        add(sub)
    return p


def _add_sample(sub) -> None:
    s = sub.add_parser("sample", help="write a seeded synthetic chest-CT cohort (DICOM + masks)")
    s.add_argument("out", help="output folder")
    s.add_argument("--cases", type=int, default=8)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--workers", type=_at_least_one, default=1,
                   help="processes writing cases at once (default 1; the cohort is the same "
                        "for any number)")
    s.add_argument("--config", default=None,
                   help="JSON file of SyntheticConfig fields replacing the defaults (the demo "
                        "model's cohort: sample_data/demo_model/cohort.json)")
    s.set_defaults(func=cmd_sample)


def _windows_arg(text: str):
    from discovery.model.windows import parse_windows

    try:
        return parse_windows(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _labels_arg(text: str):
    from discovery.model.labels import parse_label_source

    try:
        return parse_label_source(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_train(sub) -> None:
    from discovery.model.windows import DEFAULT_INPUT_WINDOWS, HU_WINDOWS

    t = sub.add_parser("train", help="train the nodule classifier on a cohort")
    t.add_argument("cohort", nargs="+", help="cohort folder(s) (case folders, + truth.csv "
                   "unless --labels names another source)")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--labels", type=_labels_arg, default=None, metavar="SOURCE",
                   help="where the labels come from: FILE.csv (case_dir or case_id, "
                        "nodule_label or nodule_id, malignant; keyed as findings.csv is), "
                        "'lidc' (the LIDC-IDRI readers' malignancy ratings 1-5: median >= 4 "
                        "malignant, <= 2 benign, the rest left out) or "
                        "'lidc:malignant>=X,benign<=Y[,ratings>=N]'; default each "
                        "COHORT/truth.csv")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--patience", type=int, default=10)
    t.add_argument("--lr", type=float, default=DEFAULT_LR,
                   help=f"AdamW learning rate, cosine-annealed (default {DEFAULT_LR:g})")
    t.add_argument("--stages", type=int, choices=(2, 3, 4), default=None,
                   help="residual stages before global pooling (default 3)")
    t.add_argument("--rotate-deg", type=float, default=0.0,
                   help="random rotations up to this many degrees (default 0: off)")
    t.add_argument("--windows", type=_windows_arg, default=",".join(DEFAULT_INPUT_WINDOWS),
                   help="HU windows of the input channels, comma separated: names ("
                        + ", ".join(f"{k} {v[0]:g}..{v[1]:g}" for k, v in HU_WINDOWS.items())
                        + ") or LOW:HIGH pairs (write --windows=-1000:-300,... for a value "
                        "starting with a minus); default %(default)s; 'wide' alone is the "
                        "demo model's single-window input")
    t.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="arithmetic of the training passes: bfloat16 (autocast; weights, "
                        "optimiser and validation stay float32) trains an epoch about 1.7 "
                        "times as fast on CPUs with native bfloat16 (AMX) and slower on "
                        "others; default "
                        "%(default)s")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt left by an interrupted run")
    t.set_defaults(func=cmd_train)


def _add_sanity(sub) -> None:
    from discovery.explain.catalog import METHODS

    q = sub.add_parser("sanity", help="randomisation test and deletion/insertion curves of the maps")
    q.add_argument("source", help="results folder (from `discovery score`) or cohort folder")
    q.add_argument("--out", default=None, help="results folder to store the tables in "
                   "(default: SOURCE when it is a results folder)")
    q.add_argument("--model", default=None,
                   help="the model the results were scored with: a model folder, MONAI "
                        "bundle, TorchScript file or module folder, as for score (default: "
                        "the demo model)")
    q.add_argument("--methods", default=",".join(METHODS),
                   help="methods for the deletion/insertion curves (comma-separated; default all)")
    q.add_argument("--randomise", default=None,
                   help="methods for the cascading randomisation test (default: gradcam and "
                        "the method the results were scored with)")
    q.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (default 20)")
    q.add_argument("--n-random", type=int, default=3, help="random orders per nodule (default 3)")
    q.add_argument("--draws", type=int, default=5,
                   help="independent random re-draws of the weights for the randomisation test (default 5)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-nodules", type=_at_least_one, default=None,
                   help="check a seeded random sample of at most N nodules (default: all)")
    q.add_argument("--layer", default=None, metavar="NAME",
                   help="CAM layer for every method (e.g. layer2: 3 mm cells on the demo "
                        "model; fine+coarse for the fused methods; default: the model card's)")
    q.set_defaults(func=cmd_sanity)


def _add_score(sub) -> None:
    from data_tools.layouts import LAYOUTS
    from discovery.explain.catalog import METHODS

    c = sub.add_parser("score", help="score a folder of cases (or a manifest CSV)")
    c.add_argument("input", help="folder of case folders, one case folder, or manifest CSV")
    c.add_argument("--out", required=True, help="results folder")
    c.add_argument("--model", default=None,
                   help="model folder, MONAI bundle folder, TorchScript file or module folder "
                        "with a discovery.json sidecar (docs/guide/own-model.md; "
                        "default: the demo model)")
    c.add_argument("--method", default=None, choices=METHODS,
                   help="attribution method (default: the model card's default map, LayerCAM "
                        "at layer2 for the demo model, else gradcam; costs: "
                        "docs/method/explanations.md)")
    c.add_argument("--layer", default=None, metavar="NAME",
                   help="CAM layer (e.g. layer2: 16^3 cells of 3 mm on the demo model; "
                        "fine+coarse for the fused methods; default: the default map's, else "
                        "the model card's "
                        "gradcam_layer); recorded in the results meta")
    c.add_argument("--lossless-ct", action="store_true",
                   help="store every CT voxel exactly in the case files (default: the air "
                        "around the patient, below -900 HU, is stored as -1000 HU; about half "
                        "the disk per scan)")
    c.add_argument("--threshold-verdicts", action="store_true",
                   help="decide every verdict by the thresholds (pointing game and near mass), "
                        "not by the model card's verdict rule where it has one "
                        "(docs/method/metrics-and-verdicts.md#verdicts)")
    c.add_argument("--labels", default=None,
                   help="CSV of known true labels (case_dir,nodule_label,malignant, e.g. a "
                        "sample cohort's truth.csv): clusters also report enrichment "
                        "against the truth")
    c.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="input layout (default auto: MSD, LUNA16, case folders with NIfTI / "
                        "LIDC XML / RTSTRUCT / SEG annotations, manifest CSV)")
    c.add_argument("--max-volume-gb", type=float, default=4.0,
                   help="refuse a scan whose float32 volume would exceed this (GiB, checked "
                        "from the headers before reading; 0 = no limit; default 4)")
    where = c.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_at_least_one, default=1,
                       help="processes scoring cases at once (default 1; each loads the model)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="score the cases on a Dask distributed cluster (e.g. "
                            "tcp://host:8786); its workers must see the input, the model and "
                            "the results folder at the same paths (not with --workers)")
    c.add_argument("--store", default=None, metavar="URL",
                   help="keep the results tables on PostgreSQL (postgresql://user@host:port/"
                        "database) instead of discovery.sqlite in the results folder; later "
                        "commands find it through RESULTS/store.json (the URL without password: "
                        "give that with PGPASSWORD or ~/.pgpass)")
    c.set_defaults(func=cmd_score)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="export a findings report")
    r.add_argument("results", help="results folder")
    r.add_argument("--format", choices=["html", "pdf", "csv", "parquet", "dicom"],
                   default="html",
                   help="html or pdf report; csv or parquet: findings to --out and patterns "
                        "beside it (NAME.patterns.csv)")
    r.add_argument("--out", required=True,
                   help="output file (a folder for --format dicom)")
    r.add_argument("--input", default=None,
                   help="--format dicom: the input that was scored (its DICOM series are "
                        "re-read, de-identified and referenced by the exports)")
    r.set_defaults(func=cmd_report)


def _add_app(sub) -> None:
    a = sub.add_parser("app", help="start the review app")
    a.add_argument("results", help="results folder")
    a.add_argument("--port", type=int, default=8501)
    a.add_argument("--host", default="127.0.0.1", help="bind address (default localhost only)")
    a.add_argument("--sanity", default=None, metavar="METHODS",
                   help="when the results hold no faithfulness checks for these methods "
                        "(comma-separated), run `discovery sanity` on them in the background "
                        "while the app is up; the Overview shows the progress, then the verdicts")
    a.add_argument("--sanity-max-nodules", type=_at_least_one, default=50, metavar="N",
                   help="with --sanity: check a seeded sample of at most N nodules (default 50)")
    a.add_argument("--model", default=None,
                   help="with --sanity: the model folder the results were scored with "
                        "(default: the demo model)")
    a.add_argument("--report", default=None, metavar="FILE",
                   help="with --sanity: write this HTML report again when the checks are done")
    a.set_defaults(func=cmd_app)

def _add_model(sub) -> None:
    from data_tools.layouts import LAYOUTS

    m = sub.add_parser("model", help="check a model before a batch: what the tool understood")
    msub = m.add_subparsers(dest="model_command", required=True)
    c = msub.add_parser("check", help="load a model and print its input, outputs, Grad-CAM "
                                      "layer, size, speed and the attribution methods that apply")
    c.add_argument("model", nargs="?", default=None,
                   help="model folder, MONAI bundle folder, TorchScript file, module folder "
                        "(discovery.json naming a factory) or package.module:factory "
                        "(default: the demo model)")
    c.add_argument("--weights", default=None, metavar="FILE",
                   help="weights for package.module:factory (safetensors or a state dict)")
    c.add_argument("--sidecar", default=None, metavar="FILE",
                   help="discovery.json (default: the one beside the bundle's configs/, the "
                        "TorchScript file or in the module folder)")
    c.set_defaults(func=cmd_model_check)
    k = msub.add_parser("compile", help="write the compiled copy of a model folder's network, "
                                        "which scoring loads without importing MONAI (for "
                                        "folders trained before it existed)")
    k.add_argument("model", nargs="?", default=None,
                   help="the tool's model folder (model.json, model.safetensors; default: the "
                        "demo model)")
    k.set_defaults(func=cmd_model_compile)
    cal = msub.add_parser("calibrate", help="fit the model's verdict rule to its measured "
                                            "reliance on the nodules of a cohort, and write it "
                                            "into the model folder's card (or a model from "
                                            "elsewhere's discovery.json)")
    cal.add_argument("model", help="the tool's model folder, a MONAI bundle folder, a module "
                                   "folder, a TorchScript file or package.module:factory")
    cal.add_argument("--weights", default=None, help="weights for package.module:factory")
    cal.add_argument("--sidecar", default=None,
                     help="discovery.json to read and write the rule into (default: the "
                          "model's own)")
    cal.add_argument("cohort", nargs="+",
                     help="folder(s) of cases with nodule masks, in any input layout, pooled "
                          "(labels are not needed); not the cases it will be judged on")
    cal.add_argument("--method", default="layercam",
                     help="the map the rule reads (default layercam)")
    cal.add_argument("--layer", default=None, metavar="NAME",
                     help="its layer (default: the layer of the card's default map when it "
                          "is this method, as for the demo model, layer2, 3 mm cells; else the "
                          "card's CAM layer)")
    cal.add_argument("--features", default=None,
                     help="comma-separated rule features (default "
                          "log_mass_on_nodule,logit,log_contrast,near_share_5mm)")
    cal.add_argument("--max-cases", type=_at_least_one, default=None, metavar="N",
                     help="use at most the first N cases found (default: all)")
    cal.add_argument("--layout", default="auto", choices=LAYOUTS,
                     help="input layout, as for score (default auto)")
    cal.add_argument("--dry-run", action="store_true",
                     help="fit and print the rule, do not write the card")
    cal.add_argument("--workers", type=_at_least_one, default=1,
                     help="cases analysed at once, each on its own process (Linux; default 1)")
    cal.add_argument("--read-all", action="store_true",
                     help="read every case even when the first ones show a model that cannot "
                          "be calibrated (default: stop once 30 predicted-malignant nodules "
                          "were measured and none rests on its nodule)")
    cal.set_defaults(func=cmd_model_calibrate)


def _methods_line(card, cam_ok: bool) -> str:
    from discovery.explain.methods import CAM_METHODS, FUSED_METHODS, IG_STEPS

    cams = ", ".join(CAM_METHODS) if cam_ok else "none of the CAM methods"
    fused = f"; {', '.join(FUSED_METHODS)}" if cam_ok else ""
    if cam_ok and card.architecture.get("name") == "external":
        fused += " with --layer FINE+COARSE"
    return f"{cams}{fused}; integrated_gradients ({IG_STEPS} steps), occlusion"


def _source_line(arch: dict) -> str:
    kind = arch.get("source")
    if kind == "monai-bundle":
        return (f"MONAI bundle {arch['bundle']!r} version {arch.get('bundle_version') or '?'} "
                f"(configs/{arch['config']}, {arch['weights']})")
    if kind == "torchscript":
        return f"TorchScript archive {arch['file']!r}"
    return f"module {arch.get('factory')} with weights {arch.get('weights')!r}"


def _output_lines(arch: dict, probe) -> list[tuple[str, str]]:
    names, t, n = arch.get("classes") or [], int(arch["target_class"]), probe.n_outputs
    how = {"logit": "one logit: P(malignant) = sigmoid",
           "logits": f"{n} logits: P(malignant) = softmax[{t}]",
           "probabilities": f"{n} probabilities: P(malignant) = output[{t}]"}[probe.output]
    source = ("as the sidecar says" if probe.output_from == "sidecar"
              else f"detected from {probe.output_from}")
    classes = (", ".join(f"{i} {name}" for i, name in enumerate(names))
               or f"{n} output(s), no names (sidecar \"classes\")")
    return [("outputs", f"{how} ({source})"), ("classes", classes),
            ("target", f"{t}" + (f" ({names[t]})" if t < len(names) else ""))]


def _layer_line(card, probe, named: str = "from the sidecar") -> str:
    if probe.refusal is not None:
        return f"none: {probe.refusal}"
    how = (named if probe.layer_from == "sidecar"
           else "auto: the last 3-D grid before global pooling")
    cells = " x ".join(f"{n * s / g:g}" for n, s, g in
                       zip(card.roi_size_vox, card.roi_spacing_mm, probe.grid))
    return (f"{card.gradcam_layer} ({how}), {probe.channels} channels on a "
            f"{'x'.join(map(str, probe.grid))} grid ({cells} mm cells)")


def cmd_model_compile(args) -> int:
    from discovery.model.card import default_model_dir, load_model
    from discovery.model.compiled import COMPILED_META, COMPILED_NAME, write_compiled

    folder = Path(args.model) if args.model is not None else default_model_dir()
    model, card = load_model(folder)          # the MONAI network; ModelError names the problem
    diff = write_compiled(model, card, folder)["max_abs_difference"]
    _console().print(f"wrote {COMPILED_NAME} and {COMPILED_META} in the model folder; largest "
                     f"difference to the MONAI network {diff:.2g} (logits and every stage)",
                     markup=False)
    return 0


def cmd_model_calibrate(args) -> int:
    from discovery.align.rule import RULE_FEATURES, describe_verdict_rule
    from discovery.batch.calibrate import (DEFAULT_RULE_FEATURES, STOP_NONE_RESTING,
                                           calibrate_verdicts, save_verdict_rule)
    from discovery.model.external import load_any_model

    features = (DEFAULT_RULE_FEATURES if args.features is None
                else tuple(f.strip() for f in args.features.split(",") if f.strip()))
    unknown = [f for f in features if f not in RULE_FEATURES]
    if unknown or not features:
        print(f"error: --features: unknown {', '.join(unknown) or '(none given)'}; available: "
              f"{', '.join(RULE_FEATURES)}", file=sys.stderr)
        return 2
    model, card = load_any_model(args.model, weights=args.weights, sidecar=args.sidecar)
    console = _console()
    try:
        with _progress() as bar:
            task = bar.add_task("calibrating", total=None, note="")
            done = calibrate_verdicts(
                args.cohort, model, card, method=args.method, layer=args.layer,
                features=features, layout=args.layout, max_cases=args.max_cases,
                stop_none_resting=None if args.read_all else STOP_NONE_RESTING,
                workers=args.workers,
                progress=lambda d, t, cid: bar.update(task, completed=d, total=t, note=cid))
    except ValueError as exc:  # one kind of nodule missing; an unknown method or layer
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for case_id, why in done.skipped:
        console.print(f"not used {case_id}: {why}", markup=False)
    console.print(f"{done.n_cases} cases, {done.n_nodules} predicted-malignant nodules with a "
                  f"measured reliance, {done.n_resting} resting on the nodule; the rule agrees "
                  f"with the measure at balanced accuracy {done.agreement:.3f} on them "
                  "(in-sample: score a cohort it never saw for the honest figure)", markup=False)
    console.print(describe_verdict_rule(done.rule), markup=False)
    if min(done.n_resting, done.n_nodules - done.n_resting) < 20:
        console.print(f"[yellow]few examples[/yellow]: {done.n_resting} nodules resting on the "
                      f"nodule and {done.n_nodules - done.n_resting} not; a rule fitted on so "
                      "few may not hold on other scans (the demo model's was fitted on 221 "
                      "nodules, 85 resting): calibrate on more cases")
    if not args.dry_run:
        where = save_verdict_rule(args.model, card, done.rule, sidecar=args.sidecar)
        console.print(f"wrote the rule into {where}; results scored before are now stale "
                      "(`python -m discovery.batch.current RESULTS`)", markup=False)
    return 0


def _compiled_line(model_arg, card) -> tuple[str, str]:
    from discovery.model.card import default_model_dir
    from discovery.model.compiled import compiled_mismatch

    folder = Path(model_arg) if model_arg is not None else default_model_dir()
    why = compiled_mismatch(folder, card)
    return ("compiled", "yes: scoring loads it without importing MONAI" if why is None else
            f"not used ({why}); `discovery model compile` writes it")


def cmd_model_check(args) -> int:
    from discovery.model.external import describe, load_any_model
    from discovery.model.probe import count_parameters, probe_network, seconds_per_roi

    model, card = load_any_model(args.model, weights=args.weights, sidecar=args.sidecar)
    arch, probe = card.architecture, describe(card)
    size, spacing = card.roi_size_vox, card.roi_spacing_mm
    extent = " x ".join(f"{n * s:g}" for n, s in zip(size, spacing))
    source = _source_line(arch) if probe else f"model folder ({arch.get('name')})"
    lines = [("model", f"{source}; network {arch.get('network', type(model).__name__)}"),
             ("input", (f"{card.in_channels} x {' x '.join(map(str, size))} voxels at "
                        f"{' x '.join(f'{s:g}' for s in spacing)} mm ({extent} mm)")),
             ("intensity", "; ".join(f"HU {lo:g} .. {hi:g} -> [0, 1], clipped"
                                     for lo, hi in card.windows))]
    if probe:
        lines += _output_lines(arch, probe)
        cam_ok, layer = probe.refusal is None, _layer_line(card, probe)
    else:
        own = probe_network(model, roi_size_vox=size, target_class=1, channels=card.in_channels,
                            layer=card.gradcam_layer)
        cam_ok, layer = True, _layer_line(card, own, "from the model card")
        lines += [("classes", ", ".join(f"{i} {n}" for i, n in enumerate(card.classes))),
                  ("target", f"1 ({card.classes[1]})"), _compiled_line(args.model, card)]
    forward, both = seconds_per_roi(model, size, channels=card.in_channels)
    lines += [("Grad-CAM", layer), ("threshold", f"{card.threshold:g} on P(malignant)"),
              ("parameters", f"{count_parameters(model):,}"),
              ("time / ROI", (f"{forward:.3f} s forward, {both:.3f} s forward + backward "
                              "(one CAM) on this machine")),
              ("methods", _methods_line(card, cam_ok)), ("verdicts", _verdicts_line(card))]
    console = _console()
    for key, value in lines:
        console.print(f"{key:<11} {value}", soft_wrap=True, markup=False)
    return 0


def _verdicts_line(card) -> str:
    if not card.verdict_rule:
        return ("by the thresholds (no verdict rule: `discovery model calibrate` fits one to "
                "the model's measured reliance on its nodules)")
    from discovery.align.rule import describe_fit

    fit = describe_fit(card.verdict_rule.get("provenance") or {})
    fitted = f", fitted on {fit}" if fit else ""
    return (f"predicted-malignant ones by the verdict rule on {card.verdict_rule.get('method')} "
            f"at {card.verdict_rule.get('layer') or card.gradcam_layer}{fitted}")


def main(argv: list[str] | None = None) -> int:
    from data_tools.errors import DataError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # imported here, not above: the store imports pandas, which `discovery score`
        # imports while its first case is read (discovery.batch.readahead)
        from discovery.store.backends import StoreError

        if not isinstance(exc, (DataError, StoreError)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``discovery`` command: :func:`main`, then exit with its status.

    Before exiting, every object left is moved out of the garbage collector's reach
    (:func:`gc.freeze`): the interpreter's final collection would otherwise walk the
    millions of objects torch and the other imports made (0.3 s of a 2-core machine's
    ``discovery score`` of one scan) to free memory the process is about to give back.

    Then, once the exit handlers have run (the logs flushed, the process pools and the
    resource tracker shut down) and the standard streams are flushed, the process ends
    without tearing its modules down one by one (another 0.12-0.2 s there): the files, the
    store and the pools are closed by then.  Where another non-daemon thread still runs, or
    the interpreter offers no way to run the exit handlers first, it exits the usual way."""
    import gc

    status = main()
    gc.freeze()
    exit_now(status)


def exit_now(status: int | None) -> None:
    """Run the exit handlers, flush stdout and stderr, and end the process with *status*
    (0 for None) without the interpreter's module teardown (:func:`run`); the usual
    :func:`sys.exit` where that would be unsafe."""
    import atexit
    import os
    import threading

    run_handlers = getattr(atexit, "_run_exitfuncs", None)   # CPython's, since 2.x
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if run_handlers is None or others:
        sys.exit(status)
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):     # a closed pipe or stream: nothing left to say
            pass
    os._exit(status or 0)


if __name__ == "__main__":
    run()
