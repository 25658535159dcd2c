"""Training protocol on a tiny ROI dataset, and the evaluation metrics by hand."""

import numpy as np
import pytest

from discovery.model.card import ModelCard, default_architecture, load_model
from discovery.model.train import RoiDataset, TrainSettings, evaluate, expected_calibration_error, train_model


def _tiny_card():
    arch = default_architecture()
    arch["kwargs"]["block_inplanes"] = [2, 4, 4, 4]
    return ModelCard(architecture=arch, roi_size_vox=(16, 16, 16))


def _toy(n_cases=9, per_case=2, seed=0):
    """Malignant ROIs hold a bright cube in the centre, benign ones a dim one."""
    rng = np.random.default_rng(seed)
    n = n_cases * per_case
    y = np.arange(n) % 2
    x = rng.normal(0.1, 0.02, (n, 1, 16, 16, 16)).astype(np.float32)
    x[:, :, 6:10, 6:10, 6:10] += np.where(y == 1, 0.8, 0.2)[:, None, None, None, None]
    return RoiDataset(x, y.astype(np.int64), np.repeat(np.arange(n_cases), per_case),
                      [f"case-{i}" for i in range(n_cases)], "hash")


def test_train_writes_a_complete_card_and_is_deterministic(tmp_path):
    s = TrainSettings(epochs=2, patience=5, batch_size=6, seed=3)
    card1 = train_model(_toy(), tmp_path / "a", settings=s, card=_tiny_card())
    card2 = train_model(_toy(), tmp_path / "b", settings=s, card=_tiny_card())
    assert card1.weights_sha256 == card2.weights_sha256  # same seed, same weights
    model, card = load_model(tmp_path / "a")
    assert card == card1
    split = card.training["split"]
    ids = [set(split[k]["case_ids"]) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # patient-level
    assert sum(len(i) for i in ids) == 9
    for key in ("auroc", "sensitivity", "specificity", "ece"):
        assert key in card.metrics["test"]
    assert card.metrics["heldout_auroc"] == card.metrics["test"]["auroc"]
    assert card.training["cohort_case_list_sha256"] == "hash"
    assert card.training_domain == {}       # the toy set records no spacings: domain unknown


def test_train_records_the_training_splits_domain(tmp_path):
    data = _toy()
    n = len(data.y)
    data = RoiDataset(data.x, data.y, data.group, data.case_ids, "hash",
                      spacing_mm=np.tile([[2.5, 0.7, 0.7]], (n, 1)) * (1 + np.arange(n)[:, None] / n),
                      volume_mm3=np.linspace(100.0, 900.0, n))
    s = TrainSettings(epochs=1, patience=5, batch_size=6, seed=3)
    card = train_model(data, tmp_path / "m", settings=s, card=_tiny_card())
    dom = card.domain
    train_rows = np.flatnonzero(np.isin(data.group, [data.case_ids.index(c) for c in
                                                     card.training["split"]["train"]["case_ids"]]))
    assert dom.slice_thickness_mm == pytest.approx((data.spacing_mm[train_rows, 0].min(),
                                                     data.spacing_mm[train_rows, 0].max()))
    assert dom.n_rois == len(train_rows) and set(dom.roi_statistics) == {"mean_c0", "std_c0"}
    assert load_model(tmp_path / "m")[1].domain == dom


def test_evaluate_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = evaluate(y, p, threshold=0.5)
    # pairs (pos, neg): (0.4,0.1) ok, (0.4,0.6) wrong, (0.9,0.1) ok, (0.9,0.6) ok -> 3/4
    assert m["auroc"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(0.5)


def test_ece_by_hand():
    # bins of width 0.1: {0.1: y=0}, {0.9: y=1, y=0}  -> 1/3*|0-0.1| + 2/3*|0.5-0.9|
    y = np.array([0, 1, 0])
    p = np.array([0.1, 0.9, 0.9])
    assert expected_calibration_error(y, p) == pytest.approx(0.1 / 3 + 2 / 3 * 0.4)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_uninterrupted_weights(tmp_path):
    s = TrainSettings(epochs=4, patience=10, batch_size=6, seed=5, rotate_deg=10.0)
    whole = train_model(_toy(), tmp_path / "whole", settings=s, card=_tiny_card())
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed once saved

    def stop_after_two(epoch, total, history):
        if epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(_toy(), tmp_path / "cut", settings=s, card=_tiny_card(), progress=stop_after_two)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    seen = []
    resumed = train_model(_toy(), tmp_path / "cut", settings=s, card=_tiny_card(), resume=True,
                          progress=lambda e, t, h: seen.append(e))
    assert seen == [3, 4]                                   # only the missing epochs ran
    assert resumed.weights_sha256 == whole.weights_sha256   # bit-identical to no interruption
    assert [h["epoch"] for h in resumed.training["history"]] == [1, 2, 3, 4]


def _interrupted_after_one_epoch(out, settings):
    """Train the toy into *out* and stop after the first epoch, leaving its checkpoint."""
    def stop(epoch, total, history):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(_toy(), out, settings=settings, card=_tiny_card(), progress=stop)


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    from data_tools.errors import DataError

    _interrupted_after_one_epoch(tmp_path, TrainSettings(epochs=3, batch_size=6, seed=5))
    other = TrainSettings(epochs=3, batch_size=6, seed=6)
    with pytest.raises(DataError, match="different settings .seed: 5 there, 6 now"):
        train_model(_toy(), tmp_path, settings=other, card=_tiny_card(), resume=True)


def test_a_checkpoint_resumes_in_the_other_memory_layout(tmp_path):
    """The layout changes the speed, not what is learnt: a checkpoint of one resumes in the
    other (and the epochs already run are not repeated)."""
    _interrupted_after_one_epoch(tmp_path, TrainSettings(epochs=2, batch_size=6, seed=5,
                                                         memory_format="contiguous"))
    seen = []
    card = train_model(_toy(), tmp_path, settings=TrainSettings(epochs=2, batch_size=6, seed=5),
                       card=_tiny_card(), resume=True, progress=lambda e, t, h: seen.append(e))
    assert seen == [2]
    assert card.training["settings"]["memory_format"] == "channels_last"


def test_small_rotations_are_rotations():
    import torch

    from discovery.model.train import _rotate, _rotation_matrices

    gen = torch.Generator().manual_seed(0)
    r = _rotation_matrices(50, 15.0, gen)
    eye = torch.eye(3).expand(50, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-5)         # orthogonal
    assert torch.allclose(torch.linalg.det(r), torch.ones(50), atol=1e-5)  # proper
    cos = ((r.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)
    assert torch.rad2deg(torch.arccos(cos)).max() <= 15.0 + 1e-3          # angle bounded
    # a centred sphere is (up to interpolation) unchanged by any rotation
    zz, yy, xx = torch.meshgrid(*(torch.arange(16.0) - 7.5,) * 3, indexing="ij")
    ball = ((zz**2 + yy**2 + xx**2) <= 25).float()[None, None].repeat(4, 1, 1, 1, 1)
    out = _rotate(ball, 15.0, gen)
    assert (out - ball).abs().mean() < 0.02 and out.shape == ball.shape


def test_synthetic_rois_match_the_truth_and_are_seeded():
    from data_tools.synthetic import SyntheticConfig, generate_case
    from discovery.model.card import ModelCard
    from discovery.model.train import synthetic_rois

    small = SyntheticConfig(shape_yx=128, n_slices=(50, 54), pixel_spacing_mm=(2.2, 2.4),
                            slice_spacing_mm=(2.0, 2.2), nodules_per_case=(1, 2))
    card = ModelCard()
    seen = []
    a = synthetic_rois(5, 3, card, config=small, progress=lambda i, n: seen.append((i, n)))
    truth = [n for i in range(3) for n in generate_case(5, config=small, index=i).nodules]
    assert a.x.shape == (len(truth), 1, *card.roi_size_vox) and a.x.dtype == np.float32
    assert 0.0 <= a.x.min() and a.x.max() <= 1.0
    assert sorted(a.y.tolist()) == sorted(int(n["malignant"]) for n in truth)
    assert set(a.group.tolist()) == {0, 1, 2} and a.case_ids == [f"synthetic-s5-{i:04d}" for i in range(3)]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    b = synthetic_rois(5, 3, card, config=small)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.spacing_mm.shape == (len(truth), 3) and (a.spacing_mm[:, 0] >= 2.0).all()
    assert len(a.volume_mm3) == len(truth) and (a.volume_mm3 > 0).all()
    assert a.domain(source="t").pixel_spacing_mm[1] <= 2.4
    assert a.cohort_hash == b.cohort_hash != synthetic_rois(6, 3, card, config=small).cohort_hash
    with pytest.raises(ValueError, match="n_cases"):
        synthetic_rois(5, 2, card, config=small)
    # two processes generating every other case: the same ROIs, labels and groups, in order
    seen2 = []
    c = synthetic_rois(5, 3, card, config=small, workers=2,
                       progress=lambda i, n: seen2.append((i, n)))
    np.testing.assert_array_equal(a.x, c.x)
    np.testing.assert_array_equal(a.y, c.y)
    np.testing.assert_array_equal(a.group, c.group)
    assert c.cohort_hash == a.cohort_hash and c.case_ids == a.case_ids
    assert sorted(seen2)[-1] == (3, 3) and len(seen2) == 2
    with pytest.raises(ValueError, match="workers"):
        synthetic_rois(5, 3, card, config=small, workers=0)


def test_collect_rois_reads_the_truth_manifest_of_a_written_cohort(tmp_path):
    import pandas as pd

    from data_tools.deid import pseudonymous_id
    from data_tools.synthetic import SyntheticConfig, generate_cohort
    from discovery.model.card import ModelCard
    from discovery.model.train import collect_rois

    small = SyntheticConfig(shape_yx=128, n_slices=(50, 54), pixel_spacing_mm=(2.2, 2.4),
                            slice_spacing_mm=(2.0, 2.2), nodules_per_case=(1, 2))
    generate_cohort(tmp_path / "c", n_cases=3, seed=4, config=small)
    truth = pd.read_csv(tmp_path / "c" / "truth.csv")
    data = collect_rois(tmp_path / "c", ModelCard())
    assert len(data.y) == len(truth) and data.x.shape[1:] == (1, *ModelCard().roi_size_vox)
    # every ROI carries its own nodule's label, grouped by its (pseudonymous) case
    want = sorted(zip([pseudonymous_id(str(d)) for d in truth["case_dir"]], truth["malignant"]))
    got = sorted(zip([data.case_ids[g] for g in data.group], data.y.tolist()))
    assert got == want


def _two_window_toy(n_cases=9, per_case=2):
    """Two channels: the lung window carries the label (a faint vs a fainter cube), the wide
    window is the same for both labels."""
    data = _toy(n_cases, per_case)
    x = np.concatenate([data.x, np.full_like(data.x, 0.05)], axis=1)
    return RoiDataset(x, data.y, data.group, data.case_ids, data.cohort_hash)


def test_train_a_two_window_model_and_refuse_a_checkpoint_of_other_windows(tmp_path):
    from data_tools.errors import DataError

    card = _tiny_card().with_windows([(-1000, -300), (-1000, 3000)])
    s = TrainSettings(epochs=3, batch_size=6, seed=5)
    saved = train_model(_two_window_toy(), tmp_path / "m", settings=s, card=card)
    model, loaded = load_model(tmp_path / "m")
    assert loaded == saved and loaded.input_windows == ((-1000.0, -300.0), (-1000.0, 3000.0))
    assert model.conv1.weight.shape[1] == 2

    def stop(epoch, total, history):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(_two_window_toy(), tmp_path / "cut", settings=s, card=card, progress=stop)
    other = card.with_windows([(-1000, -400), (-1000, 3000)])  # same channels, other windows
    with pytest.raises(DataError, match="different windows .HU windows"):
        train_model(_two_window_toy(), tmp_path / "cut", settings=s, card=other, resume=True)


def test_synthetic_rois_of_a_multi_window_card_keep_the_wide_channel():
    from data_tools.synthetic import SyntheticConfig
    from discovery.model.rois import parse_windows
    from discovery.model.train import synthetic_rois

    small = SyntheticConfig(shape_yx=128, n_slices=(50, 54), pixel_spacing_mm=(2.2, 2.4),
                            slice_spacing_mm=(2.0, 2.2), nodules_per_case=(1, 1))
    one = synthetic_rois(5, 3, ModelCard(), config=small)
    three = synthetic_rois(5, 3, ModelCard().with_windows(parse_windows("lung,soft,wide")),
                           config=small)
    assert three.x.shape == (len(one.y), 3, *ModelCard().roi_size_vox)
    assert three.x[:, 2].tobytes() == one.x[:, 0].tobytes()
    # lung parenchyma (about -860 HU) sits low in the wide window, mid-scale in the lung one
    assert np.median(three.x[:, 0]) > 4 * np.median(three.x[:, 2])


def test_train_command_windows_option():
    from discovery.cli import build_parser
    from discovery.model.rois import HU_WINDOWS

    parse = build_parser().parse_args
    args = parse(["train", "cohort", "--out", "m"])
    assert args.windows == (HU_WINDOWS["lung"], HU_WINDOWS["soft"], HU_WINDOWS["dense"],
                            HU_WINDOWS["lucent"])
    assert parse(["train", "c", "--out", "m", "--windows", "wide"]).windows == (HU_WINDOWS["wide"],)
    assert parse(["train", "c", "--out", "m", "--windows=-1000:-400,wide"]).windows == (
        (-1000.0, -400.0), HU_WINDOWS["wide"])
    with pytest.raises(SystemExit):
        parse(["train", "c", "--out", "m", "--windows", "bone"])


def test_input_channel_stats_by_hand():
    from discovery.model.train import MIN_INPUT_STD, input_channel_stats

    x = np.zeros((2, 3, 2, 2, 2), np.float32)
    x[0, 0], x[1, 0] = 0.2, 0.6          # mean 0.4, std 0.2
    x[:, 1] = 0.5                         # constant: std floored
    x[0, 2, 0, 0, 0] = 0.8                # one bright voxel in 16: mean 0.05
    mean, std = input_channel_stats(x)
    assert mean == pytest.approx([0.4, 0.5, 0.05])
    assert std == pytest.approx([0.2, MIN_INPUT_STD, 0.8 * np.sqrt(15) / 16], rel=1e-5)


def test_training_standardises_each_input_channel_on_the_training_split(tmp_path):
    """The window channels differ a lot in spread (lung about 0.34, wide 0.09, dense 0.01 on
    nodule ROIs); the network standardises each by its training-split mean and standard
    deviation, recorded in the card, so that no channel is drowned by another at the first
    convolution."""
    import torch

    from discovery.model.card import build_network
    from discovery.model.train import MIN_INPUT_STD, input_channel_stats

    data = _two_window_toy()
    data.x[:, 1] = data.x[:, 0] * 0.2 + 0.01             # a low-spread second channel
    card = _tiny_card().with_windows([(-1000, -300), (-1000, 3000)])
    s = TrainSettings(epochs=1, batch_size=6, seed=5)
    saved = train_model(data, tmp_path / "m", settings=s, card=card)
    train_ids = set(saved.training["split"]["train"]["case_ids"])
    rows = [i for i, g in enumerate(data.group) if data.case_ids[g] in train_ids]
    mean, std = input_channel_stats(data.x[rows])
    assert saved.architecture["input_mean"] == mean and saved.architecture["input_std"] == std
    assert MIN_INPUT_STD < std[1] < std[0] / 4            # really different spreads
    model, loaded = load_model(tmp_path / "m")
    assert loaded.architecture == saved.architecture
    assert not any("input_" in k for k in model.state_dict())   # the card holds them
    x = torch.from_numpy(data.x[:4])
    plain = build_network(card).eval()                    # same weights, no standardisation
    plain.load_state_dict(model.state_dict())
    m, sd = torch.tensor(mean).reshape(1, 2, 1, 1, 1), torch.tensor(std).reshape(1, 2, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - m) / sd))
        z = (torch.from_numpy(data.x[rows]) - m) / sd     # unit spread per channel
        assert torch.allclose(z.std(dim=(0, 2, 3, 4)), torch.ones(2), atol=1e-3)
    # statistics already on the card are kept (e.g. a card trained before)
    again = train_model(data, tmp_path / "n", settings=s, card=saved)
    assert again.architecture["input_mean"] == mean


def test_command_line_defaults_match_the_library_and_the_parser_needs_no_torch():
    import subprocess
    import sys

    from discovery.cli import DEFAULT_LR
    from discovery.explain import catalog, methods
    from discovery.model.train import TrainSettings

    assert DEFAULT_LR == TrainSettings.lr
    from discovery.cli import build_parser
    from discovery.model.train import PRECISIONS
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    precision = next(a for a in train._actions if a.dest == "precision")
    assert tuple(precision.choices) == PRECISIONS and precision.default == TrainSettings.precision
    assert methods.METHODS is catalog.METHODS and methods.CAM_METHODS is catalog.CAM_METHODS
    # `discovery --help` and `discovery app` build the parser: it must not pull in torch
    code = ("import sys; import discovery.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'monai', 'captum', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_bfloat16_training_learns_and_saves_a_float32_network(tmp_path):
    import torch

    s = TrainSettings(epochs=4, patience=10, batch_size=6, seed=3, precision="bfloat16")
    card = train_model(_toy(n_cases=12), tmp_path / "m", settings=s, card=_tiny_card())
    assert card.training["settings"]["precision"] == "bfloat16"
    model, _ = load_model(tmp_path / "m")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    again = train_model(_toy(n_cases=12), tmp_path / "n", settings=s, card=_tiny_card())
    assert again.weights_sha256 == card.weights_sha256          # still deterministic
    plain = train_model(_toy(n_cases=12), tmp_path / "f", card=_tiny_card(),
                        settings=TrainSettings(epochs=4, patience=10, batch_size=6, seed=3))
    assert plain.weights_sha256 != card.weights_sha256          # the arithmetic did change
    # the bright-cube toy is learnt either way: the last epoch's loss fell below the first's
    for c in (card, plain):
        losses = [h["loss"] for h in c.training["history"]]
        assert losses[-1] < losses[0]


def test_training_in_channels_last_saves_and_returns_the_standard_layout(tmp_path):
    """Training runs in the channels-last 3-D layout (faster convolutions); what is saved and
    loaded is in the layout the network was built in, and equals a plain rebuild's."""
    import torch
    from safetensors.torch import load_file

    from discovery.model.card import WEIGHTS_NAME

    s = TrainSettings(epochs=2, patience=5, batch_size=6, seed=3)
    train_model(_toy(), tmp_path / "m", settings=s, card=_tiny_card())
    saved = load_file(tmp_path / "m" / WEIGHTS_NAME)
    conv = [v for v in saved.values() if v.dim() == 5]
    assert conv and all(v.is_contiguous() for v in conv)
    model, _ = load_model(tmp_path / "m")
    assert all(p.is_contiguous() for p in model.parameters())
    x = torch.from_numpy(_toy().x[:4])
    with torch.no_grad():
        a = model(x)
        b = model(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)   # the layout is not the arithmetic
    # the layout before, on request: the same losses up to rounding
    plain = train_model(_toy(), tmp_path / "c", card=_tiny_card(),
                        settings=TrainSettings(epochs=2, patience=5, batch_size=6, seed=3,
                                               memory_format="contiguous"))
    fast = load_model(tmp_path / "m")[1]
    np.testing.assert_allclose([h["loss"] for h in plain.training["history"]],
                               [h["loss"] for h in fast.training["history"]], rtol=1e-4)
    assert fast.training["settings"]["memory_format"] == "channels_last"
    with pytest.raises(ValueError, match="memory_format must be one of channels_last"):
        TrainSettings(memory_format="channels_first")


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16; got 'float16'"):
        TrainSettings(precision="float16")


def test_a_checkpoint_from_before_the_precision_setting_resumes_as_float32(tmp_path):
    import torch

    s = TrainSettings(epochs=3, batch_size=6, seed=5)
    _interrupted_after_one_epoch(tmp_path, s)
    ckpt = tmp_path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["settings"]["precision"]                   # as written by earlier versions
    torch.save(state, ckpt)
    resumed = train_model(_toy(), tmp_path, settings=s, card=_tiny_card(), resume=True)
    assert [h["epoch"] for h in resumed.training["history"]] == [1, 2, 3]


def test_bfloat16_on_a_cpu_without_it_says_it_will_be_slow(tmp_path, monkeypatch, caplog):
    import logging

    from discovery.model import train

    monkeypatch.setattr(train, "_native_bfloat16", lambda: False)
    s = TrainSettings(epochs=1, batch_size=6, seed=3, precision="bfloat16")
    with caplog.at_level(logging.WARNING, logger="discovery.model.train"):
        train_model(_toy(), tmp_path / "m", settings=s, card=_tiny_card())
    assert "without native bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="discovery.model.train"):
        train_model(_toy(), tmp_path / "f", settings=TrainSettings(epochs=1, batch_size=6),
                    card=_tiny_card())
    assert "bfloat16" not in caplog.text                  # float32 says nothing
