"""``discovery train`` labels: LIDC readers' malignancy ratings, a labels CSV keyed as the
findings are, the sample cohort's truth.csv, and the refusals."""

from __future__ import annotations

import json

import pytest
from _layout_factory import write_lidc_cohort

from data_tools.errors import DataError
from discovery.model.card import ModelCard, default_architecture
from discovery.model.labels import LabelSource, LidcRatingRule, parse_label_source
from discovery.model.train import TrainSettings, collect_rois, train_model

#: per case, per reader, the malignancy rating of nodule n1 and n2 (None: not rated)
RATINGS = {
    "LIDC-IDRI-0001": [(5, 1), (4, 2)],        # n1 4.5 malignant, n2 1.5 benign
    "LIDC-IDRI-0002": [(4, 3), (4, 3)],        # n1 4 malignant,   n2 3 in between
    "LIDC-IDRI-0003": [(2, None), (2, None)],  # n1 2 benign,      n2 unrated
    "LIDC-IDRI-0004": [(3, 1), (4, None)],     # n1 3.5 between,   n2 1 (one rating) benign
    "LIDC-IDRI-0005": [(5, 2), (5, 3)],        # n1 5 malignant,   n2 2.5 in between
}


@pytest.fixture(scope="module")
def lidc(tmp_path_factory):
    root = tmp_path_factory.mktemp("lidc") / "cohort"
    return root, write_lidc_cohort(root, RATINGS)


def _tiny_card():
    arch = default_architecture()
    arch["kwargs"]["block_inplanes"] = [2, 4, 4, 4]
    return ModelCard(architecture=arch, roi_size_vox=(16, 16, 16)).with_windows([(-1000, 400)])


def _used(data, ids):
    name = {v: k[-4:] for k, v in ids.items()}
    return sorted((name[c], n, y) for c, n, y in data.labelling.nodules)


def test_lidc_ratings_default_rule_keeps_and_drops_the_right_nodules(lidc, tmp_path):
    root, ids = lidc
    data = collect_rois(root, _tiny_card(), labels="lidc")
    assert _used(data, ids) == [("0001", "n1", 1), ("0001", "n2", 0), ("0002", "n1", 1),
                                ("0003", "n1", 0), ("0004", "n2", 0), ("0005", "n1", 1)]
    assert list(data.y) == [y for _, _, y in data.labelling.nodules]
    c = data.labelling
    assert (c.malignant, c.benign, c.between, c.unrated) == (3, 3, 3, 1)
    assert c.summary() == ("LIDC ratings: 10 nodules, 3 malignant (median >= 4), 3 benign "
                           "(median <= 2), 4 left out (3 in between, 1 without a rating)")
    assert len(data.case_ids) == 5 and data.x.shape == (6, 1, 16, 16, 16)
    card = train_model(data, tmp_path / "m", card=_tiny_card(),
                       settings=TrainSettings(epochs=1, batch_size=4))
    assert card.training["n_nodules"] == 6
    assert card.training["labels"] == {
        "source": "LIDC ratings: median malignancy >= 4 malignant, <= 2 benign",
        "n_malignant": 3, "n_benign": 3, "n_left_out": 4, "n_unmatched": 0,
        "unreadable_cases": []}


def test_a_broken_case_is_left_out_with_its_reason_and_the_rest_trains(lidc, tmp_path):
    import shutil

    root, ids = lidc
    copy = tmp_path / "cohort"
    shutil.copytree(root, copy)
    broken = sorted((copy / "LIDC-IDRI-0002").rglob("*.dcm"))[3]
    broken.write_bytes(broken.read_bytes()[:400])                 # a truncated slice
    data = collect_rois(copy, _tiny_card(), labels="lidc")
    assert [n for n in _used(data, ids) if n[0] == "0002"] == []  # that case left out ...
    assert len(data.case_ids) == 4 and len(data.y) == 5           # ... the others kept
    (cid, why), = data.labelling.failed
    assert cid == ids["LIDC-IDRI-0002"] and "uneven slice spacing" in why and "skipped" in why
    assert "LIDC-IDRI" not in why and str(tmp_path) not in why    # no source path
    assert f"{cid} left out, unreadable: " in data.labelling.summary()
    card = train_model(data, tmp_path / "m", card=_tiny_card(),
                       settings=TrainSettings(epochs=1, batch_size=4))
    assert card.training["labels"]["unreadable_cases"] == [{"case_id": cid, "why": why}]


@pytest.mark.parametrize("spec, changed", [
    ("lidc:ratings>=2", {("0004", "n2", 0): None}),           # one rating is not enough
    ("lidc:malignant>=3.5,benign<=2", {("0004", "n1", 1): 1}),
    ("lidc: benign <= 2.5 , malignant >= 4", {("0005", "n2", 0): 0}),
])
def test_lidc_rule_is_configurable(lidc, spec, changed):
    root, ids = lidc
    base = {("0001", "n1"): 1, ("0001", "n2"): 0, ("0002", "n1"): 1, ("0003", "n1"): 0,
            ("0004", "n2"): 0, ("0005", "n1"): 1}
    for (case, nod, _), y in changed.items():
        if y is None:
            base.pop((case, nod))
        else:
            base[(case, nod)] = y
    data = collect_rois(root, _tiny_card(), labels=spec)
    assert _used(data, ids) == sorted((c, n, y) for (c, n), y in base.items())


def test_rule_object_is_keyword_only_and_validated():
    assert LidcRatingRule() == LidcRatingRule(malignant_at_least=4, benign_at_most=2)
    with pytest.raises(TypeError):
        LidcRatingRule(4, 2)
    for kwargs, needle in [({"malignant_at_least": 6}, "in [1, 5]"),
                           ({"benign_at_most": 4}, "must be below"),
                           ({"benign_at_most": True}, "in [1, 5]"),
                           ({"min_ratings": 0}, "integer >= 1")]:
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            LidcRatingRule(**kwargs)
    assert parse_label_source(None) == LabelSource() == parse_label_source("truth")
    assert parse_label_source("labels.csv").kind == "csv"


def test_train_command_from_lidc_ratings(lidc, tmp_path, capsys):
    from discovery.cli import main

    root, _ = lidc
    rc = main(["train", str(root), "--out", str(tmp_path / "m"), "--labels",
               "lidc:malignant>=4,benign<=2", "--epochs", "1", "--stages", "2",
               "--windows", "wide"])
    out = " ".join(capsys.readouterr().out.split())   # rich wraps long lines
    assert rc == 0
    assert ("LIDC ratings: 10 nodules, 3 malignant (median >= 4), 3 benign (median <= 2), "
            "4 left out (3 in between, 1 without a rating)") in out
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["training"]["labels"]["n_malignant"] == 3 and card["training"]["n_nodules"] == 6


@pytest.mark.parametrize("args, needle", [
    (["--labels", "lidc:malignant>4"], "unknown labelling rule term 'malignant>4'"),
    (["--labels", "lidc:benign<=4"], "must be below malignant_at_least"),
    (["--labels", "lidc:ratings>=3"], "no labelled nodule left"),
])
def test_train_command_refusals(lidc, tmp_path, capsys, args, needle):
    from discovery.cli import main

    root, _ = lidc
    try:
        rc = main(["train", str(root), "--out", str(tmp_path / "m"), *args])
    except SystemExit as exc:   # argparse refuses the option
        rc = exc.code
    assert rc == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.json").exists()


def test_labels_csv_missing_columns_names_the_file(lidc, tmp_path, capsys):
    from discovery.cli import main

    root, _ = lidc
    (tmp_path / "my_labels.csv").write_text("case,nodule,malignant\nA,1,1\n")
    rc = main(["train", str(root), "--out", str(tmp_path / "m"), "--labels",
               str(tmp_path / "my_labels.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "'my_labels.csv' needs columns case_dir (or case_id)" in err
    assert str(tmp_path) not in err


def test_labels_csv_from_a_findings_export_and_truth_csv(lidc, tmp_path):
    """case_id as the findings write it (pseudonymous) and nodule_id, or case_dir and
    nodule_label as truth.csv has them: the same nodules."""
    root, ids = lidc
    rows = [(ids["LIDC-IDRI-0001"], "n1", 1), (ids["LIDC-IDRI-0002"], "n2", 0),
            (ids["LIDC-IDRI-0003"], "n1", 0), (ids["LIDC-IDRI-0005"], "n2", 1),
            (ids["LIDC-IDRI-0005"], "n7", 1)]          # no such nodule: left out
    findings = tmp_path / "findings.csv"
    findings.write_text("case_id,nodule_id,probability,malignant\n"
                        + "".join(f"{c},{n},0.5,{y}\n" for c, n, y in rows))
    data = collect_rois(root, _tiny_card(), labels=str(findings))
    want = [("0001", "n1", 1), ("0002", "n2", 0), ("0003", "n1", 0), ("0005", "n2", 1)]
    assert _used(data, ids) == want
    assert data.labelling.unmatched == 1
    assert data.labelling.summary() == ("labels file 'findings.csv': 4 nodules labelled, "
                                        "2 malignant, 2 benign; 1 label(s) naming no nodule "
                                        "of the cohort left out")
    (root / "truth.csv").write_text("case_dir,nodule_label,malignant\n" + "".join(
        f"{k},{n[1:]},{y}\n" for k, v in ids.items() for c, n, y in rows if c == v))
    try:
        truth = collect_rois(root, _tiny_card())
    finally:
        (root / "truth.csv").unlink()
    assert _used(truth, ids) == want and truth.labelling.summary().startswith("truth.csv: 4")


def test_missing_truth_csv_points_at_the_other_sources(lidc):
    root, _ = lidc
    with pytest.raises(DataError, match="--labels lidc"):
        collect_rois(root, _tiny_card())
