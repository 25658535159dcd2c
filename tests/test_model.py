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
    """Only the two files remain, even after a save that fails half-way (no temporary file
    left), and the card that failed to be written keeps its old content."""
    card = save_model(build_network(ModelCard()), ModelCard(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]

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
    # the figure itself is reported in the README; here: present, valid and better than chance
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
