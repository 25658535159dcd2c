"""Model folder: safetensors + card round trip, hash check, clear errors."""

import json
import pathlib

import pytest
import torch

from data_tools.errors import ModelError
from discovery.model.card import ModelCard, build_network, default_model_dir, load_model, save_model


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_network(ModelCard())
    card = save_model(model, ModelCard(metrics={"heldout_auroc": 0.5}), tmp_path)
    assert len(card.weights_sha256) == 64
    loaded, card2 = load_model(tmp_path)
    assert card2 == card and not loaded.training and loaded.cam_layer == card.gradcam_layer
    x = torch.rand(1, 1, 32, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))


def test_save_model_writes_atomically(tmp_path, monkeypatch):
    """Weights, card and the compiled copy; after a save that fails half-way only the two
    files remain (no temporary file left, no compiled copy of other weights), and the card
    that failed to be written keeps its old content."""
    card = save_model(build_network(ModelCard()), ModelCard(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.compiled.json", "model.compiled.pt", "model.json", "model.safetensors"]

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", broken)
    torch.manual_seed(1)
    with pytest.raises(OSError, match="disk full"):
        save_model(build_network(ModelCard()), ModelCard(), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    # the weights were replaced but the card was not: the hash check refuses the mixture
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["weights_sha256"] == card.weights_sha256


def test_tampered_weights_are_refused(tmp_path):
    save_model(build_network(ModelCard()), ModelCard(), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256") as err:
        load_model(tmp_path)
    assert str(tmp_path) not in str(err.value)


def test_missing_card(tmp_path):
    with pytest.raises(ModelError, match="no model.json"):
        load_model(tmp_path)


def test_wrong_architecture(tmp_path):
    card = save_model(build_network(ModelCard()), ModelCard(), tmp_path)
    raw = json.loads((tmp_path / "model.json").read_text())
    raw["architecture"]["name"] = "torchvision.resnet18"
    (tmp_path / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="architecture"):
        load_model(tmp_path)
    assert card.weights_sha256


def test_committed_demo_model_card():
    card_path = default_model_dir() / "model.json"
    if not card_path.exists():
        pytest.fail("the demo model (sample_data/demo_model) is missing: it is committed with the project")
    model, card = load_model()
    # the figure itself is in docs/guide/models.md; here: present, valid and better than chance
    assert 0.5 < card.metrics["heldout_auroc"] <= 1.0
    for key in ("auroc", "sensitivity", "specificity", "ece"):
        assert 0.0 <= card.metrics["test"][key] <= 1.0
    assert card.training["cohort_case_list_sha256"]


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_shortened_trunk_keeps_grad_cam_layer_before_pooling(stages):
    from discovery.model.card import default_architecture

    arch = default_architecture()
    arch["stages"] = stages
    model = build_network(ModelCard(architecture=arch, gradcam_layer=f"layer{min(stages, 3)}"))
    assert model(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2)
    removed = [n for n in ("layer3", "layer4") if isinstance(getattr(model, n), torch.nn.Identity)]
    assert len(removed) == 4 - stages
    with pytest.raises(ModelError, match="stages"):
        build_network(ModelCard(architecture={**arch, "stages": 5}))


@pytest.mark.parametrize("extra, layer", [({"context": 4}, "gate"), ({"pointwise": 2}, "head"),
                                          ({"context": 4, "pointwise": 1}, "head")])
def test_local_variants_keep_the_cam_an_exact_decomposition_of_the_logit(extra, layer):
    """The experimental 2-stage variants (a context gain, pointwise layers) pool their CAM
    layer globally into the last layer: the class-contrast CAM, summed over the cells, is
    the logit difference without the bias (docs/method/metrics-and-verdicts.md)."""
    from discovery.model.card import default_architecture

    torch.manual_seed(0)
    arch = {**default_architecture(), "stages": 2, **extra}
    model = build_network(ModelCard(architecture=arch, gradcam_layer=layer)).eval()
    if "context" in extra:                     # a gain other than its initial 1
        torch.nn.init.normal_(model.context.net[-1].weight)
    acts = {}
    dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o))
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        logits = model(x)
    a = acts["a"]
    assert a.shape[-3:] == (16, 16, 16)       # 3 mm cells: the receptive field stays small
    w = model.fc.weight[1] - model.fc.weight[0]
    cam = torch.einsum("c,nczyx->nzyx", w, a) / a[0, 0].numel()
    expect = logits[:, 1] - logits[:, 0] - (model.fc.bias[1] - model.fc.bias[0])
    torch.testing.assert_close(cam.sum(dim=(1, 2, 3)), expect, atol=1e-4, rtol=1e-4)


def _tiny(card: ModelCard) -> ModelCard:
    arch = dict(card.architecture, kwargs=dict(card.architecture["kwargs"],
                                               block_inplanes=[2, 4, 4, 4]))
    return ModelCard(architecture=arch, roi_size_vox=(16, 16, 16), hu_window=card.hu_window,
                     input_windows=card.input_windows)


def test_card_with_windows_round_trips_and_old_cards_keep_one_window(tmp_path):
    card = ModelCard().with_windows([(-1000, -300), (-160, 240), (-1000, 3000)])
    assert card.input_windows == ((-1000.0, -300.0), (-160.0, 240.0), (-1000.0, 3000.0))
    assert card.in_channels == 3 and card.architecture["kwargs"]["n_input_channels"] == 3
    assert card.hu_window == (-1000.0, 3000.0)  # their union, for the record
    assert ModelCard().architecture["kwargs"]["n_input_channels"] == 1  # not mutated
    saved = save_model(build_network(card), card, tmp_path)
    raw = json.loads((tmp_path / "model.json").read_text())
    assert raw["input_windows"] == [[-1000.0, -300.0], [-160.0, 240.0], [-1000.0, 3000.0]]
    _, loaded = load_model(tmp_path)
    assert loaded == saved and loaded.windows == card.input_windows
    # one window is the older form: hu_window, no input_windows (the demo model's input)
    one = ModelCard().with_windows([(-1000, 3000)])
    assert one.input_windows == () and one.windows == ((-1000.0, 3000.0),)
    assert one.to_json() == ModelCard().to_json()
    # a card written before input_windows existed reads as one window
    del raw["input_windows"]
    old = ModelCard.from_dict({**raw, "architecture": ModelCard().architecture})
    assert old.windows == ((-1000.0, 3000.0),) and old.in_channels == 1


def test_committed_demo_card_has_its_single_wide_window():
    _, card = load_model()
    assert card.input_windows == () and card.windows == ((-1000.0, 3000.0),)
    assert card.in_channels == 1


def test_windows_and_channels_must_agree():
    with pytest.raises(ValueError, match="high > low"):
        ModelCard(input_windows=((0.0, -10.0),))
    with pytest.raises(ValueError, match="high > low"):
        ModelCard(hu_window=(5.0, 5.0))
    with pytest.raises(ValueError, match="at least one"):
        ModelCard().with_windows([])
    mismatch = ModelCard(input_windows=((-1000.0, -300.0), (-1000.0, 3000.0)))  # arch says 1
    with pytest.raises(ModelError, match="1 input channel.*2 HU window"):
        build_network(mismatch)


def test_two_window_network_builds_scores_and_reads_each_window():
    """A tiny 2-window network: its input is (N, 2, S, S, S); with the first convolution's
    weights on the wide channel set to zero it cannot tell 500 HU from 2000 HU (both 1 in
    the lung window), with those on the lung channel zeroed it can."""
    import numpy as np

    from discovery.model.rois import roi_input
    from discovery.model.train import predict_probabilities
    from data_tools.volume import Volume, affine_from_spacing

    card = _tiny(ModelCard().with_windows([(-1000, -300), (-1000, 3000)]))
    assert card.in_channels == 2
    torch.manual_seed(0)
    model = build_network(card).eval()
    arr = np.full((24, 24, 24), -860.0, np.float32)
    rois = []
    for blob in (500.0, 2000.0):
        arr[10:14, 10:14, 10:14] = blob
        rois.append(roi_input(Volume(arr.copy(), affine_from_spacing((1.5,) * 3)), (11.5,) * 3, card))
    x = np.stack(rois)
    assert x.shape == (2, 2, 16, 16, 16)
    assert np.array_equal(x[0, 0], x[1, 0]) and not np.array_equal(x[0, 1], x[1, 1])
    p = predict_probabilities(model, x)
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    with torch.no_grad():
        model.conv1.weight[:, 1] = 0.0       # blind to the wide window
    p = predict_probabilities(model, x)
    assert p[0] == p[1]
    torch.manual_seed(0)
    model = build_network(card).eval()
    with torch.no_grad():
        model.conv1.weight[:, 0] = 0.0       # blind to the lung window
    p = predict_probabilities(model, x)
    assert p[0] != p[1]


def test_input_standardisation_lives_in_the_card_not_the_weights(tmp_path):
    card = _tiny(ModelCard().with_windows([(-1000, -300), (-1000, 3000)]))
    std_card = ModelCard(**{**card.__dict__, "architecture": {
        **card.architecture, "input_mean": [0.4, 0.1], "input_std": [0.3, 0.05]}})
    torch.manual_seed(0)
    model = build_network(std_card).eval()
    plain = build_network(card).eval()
    assert set(model.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 2, 16, 16, 16)
    mean = torch.tensor([0.4, 0.1]).reshape(1, 2, 1, 1, 1)
    std = torch.tensor([0.3, 0.05]).reshape(1, 2, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - mean) / std))
    save_model(model, std_card, tmp_path)
    loaded, card2 = load_model(tmp_path)
    assert card2.architecture["input_std"] == [0.3, 0.05]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    for bad in ({"input_mean": [0.4]}, {"input_mean": [0.4], "input_std": [0.3]},
                {"input_mean": [0.4, 0.1], "input_std": [0.3, 0.0]}):
        with pytest.raises(ModelError, match="input_mean"):
            build_network(ModelCard(**{**card.__dict__, "architecture": {**card.architecture,
                                                                          **bad}}))
    # the demo model's card names none: its input goes in unchanged
    demo, _ = load_model()
    assert demo.input_mean is None and demo.input_std is None
