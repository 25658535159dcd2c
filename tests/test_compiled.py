"""The compiled copy of the tool's network (discovery.model.compiled): the same logits, maps
and activations as the MONAI network, no MONAI import, and never used when it does not
match its folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.errors import ModelError
from discovery.explain.methods import predict_and_explain
from discovery.model.card import ModelCard, build_network, load_model, save_model
from discovery.model.compiled import (
    COMPILED_META,
    COMPILED_NAME,
    CompiledResNet,
    compile_network,
    load_compiled,
)
from discovery.model.network import NoduleResNet

ROOT = Path(__file__).resolve().parents[1]


def _card(stages: int = 3, windows=((-1000.0, 3000.0),), standardise: bool = False) -> ModelCard:
    card = ModelCard().with_windows(windows)
    arch = dict(card.architecture, stages=stages)
    if standardise:
        arch["input_mean"] = [0.2] * len(windows)
        arch["input_std"] = [0.3] * len(windows)
    return dataclasses.replace(card, architecture=arch)


def _saved(tmp_path, card: ModelCard, seed: int = 3) -> tuple[NoduleResNet, ModelCard, Path]:
    torch.manual_seed(seed)
    net = build_network(card).eval()
    with torch.no_grad():                    # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    out = tmp_path / f"model-{stages_of(card)}-{card.in_channels}"
    saved = save_model(net, card, out)
    return net, saved, out


def stages_of(card: ModelCard) -> int:
    return int(card.architecture.get("stages", 4))


@pytest.mark.parametrize("stages,windows,standardise", [
    (3, ((-1000.0, 3000.0),), False),                       # the demo model's form
    (2, ((-1000.0, 3000.0),), True),
    (4, ((-1000.0, -400.0), (-160.0, 240.0)), True),        # two windows, all four stages
])
def test_compiled_copy_gives_the_networks_logits_maps_and_activations(tmp_path, stages, windows,
                                                                      standardise):
    net, card, folder = _saved(tmp_path, _card(stages, windows, standardise))
    assert (folder / COMPILED_NAME).is_file() and (folder / COMPILED_META).is_file()
    fast, card2 = load_model(folder, compiled=True)
    eager, _ = load_model(folder)
    assert isinstance(fast, CompiledResNet) and isinstance(eager, NoduleResNet)
    assert card2 == card and fast.cam_layer == eager.cam_layer
    rois = torch.rand((3, card.in_channels, *card.roi_size_vox),
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(fast(rois).numpy(), eager(rois).numpy(), atol=1e-5)
    layer = "layer3" if stages >= 3 else "layer2"
    for method, lay in [("gradcam", layer), ("layercam", "layer2"), ("hirescam", "layer1"),
                        ("gradcam-refined", f"layer1+{layer}"), ("integrated_gradients", layer)]:
        a = predict_and_explain(fast, rois, method=method, layer=lay, return_activations=True)
        b = predict_and_explain(eager, rois, method=method, layer=lay, return_activations=True)
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)           # probabilities
        assert np.abs(b[1]).max() > 0                               # a map worth comparing
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6 * np.abs(b[1]).max())
        np.testing.assert_allclose(a[-1], b[-1], atol=1e-5)         # the layer's activations


def test_compiled_copy_is_checked_and_the_caller_network_is_not_changed(tmp_path):
    net, card, folder = _saved(tmp_path, _card())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    archive, diff = compile_network(net, card)
    assert diff <= 1e-5 and net.training                         # the caller's mode kept
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    meta = json.loads((folder / COMPILED_META).read_text())
    assert meta["weights_sha256"] == card.weights_sha256 and meta["max_abs_difference"] <= 1e-5


def test_load_falls_back_to_the_monai_network_when_the_copy_does_not_match(tmp_path, caplog):
    _, card, folder = _saved(tmp_path, _card())
    meta_path = folder / COMPILED_META
    good = meta_path.read_text()
    caplog.set_level(logging.INFO, logger="discovery.model.compiled")
    for edit, why in [
        (lambda m: m.update(weights_sha256="0" * 64), "other weights"),
        (lambda m: m.update(architecture_sha256="0" * 64), "another architecture"),
        (lambda m: m.update(format=99), "format"),
    ]:
        meta = json.loads(good)
        edit(meta)
        meta_path.write_text(json.dumps(meta))
        caplog.clear()
        assert load_compiled(folder, card) is None
        assert why in caplog.text and str(tmp_path) not in caplog.text
        assert isinstance(load_model(folder, compiled=True)[0], NoduleResNet)
    meta_path.write_text("{not json")
    assert load_compiled(folder, card) is None
    meta_path.write_text(good)
    with open(folder / COMPILED_NAME, "ab") as fh:                 # the archive changed
        fh.write(b"\0")
    caplog.clear()
    assert load_compiled(folder, card) is None and "changed" in caplog.text
    (folder / COMPILED_NAME).unlink()
    assert isinstance(load_model(folder, compiled=True)[0], NoduleResNet)


class _Rescaled(NoduleResNet):
    """A network whose forward does more than run its stages (here: doubles the logits)."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def test_a_network_the_stages_do_not_reproduce_gets_no_compiled_copy(tmp_path, caplog):
    card = _card()
    net, _, folder = _saved(tmp_path, card)
    assert (folder / COMPILED_NAME).is_file()
    odd = _Rescaled(cam_layer="layer3", stages=3, **card.architecture["kwargs"]).eval()
    odd.load_state_dict(net.state_dict())
    with pytest.raises(ModelError, match="differs from the MONAI network"):
        compile_network(odd, card)
    caplog.set_level(logging.WARNING, logger="discovery.model.card")
    save_model(odd, card, folder)                                  # same folder, other net
    assert not (folder / COMPILED_NAME).exists() and not (folder / COMPILED_META).exists()
    assert "no compiled copy" in caplog.text


def test_scoring_loads_the_compiled_copy_without_importing_monai(tmp_path):
    _, _, folder = _saved(tmp_path, _card())
    code = ("import sys; from discovery.model.card import load_model; "
            f"m, c = load_model({str(folder)!r}, compiled=True); "
            "print(type(m).__name__, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["CompiledResNet", "False"]


def test_model_compile_adds_the_copy_to_an_older_folder_and_check_says_so(tmp_path, capsys):
    from discovery.cli import main

    _, card, folder = _saved(tmp_path, _card())
    (folder / COMPILED_NAME).unlink()                    # a folder trained before the copy
    (folder / COMPILED_META).unlink()
    assert main(["model", "check", str(folder)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "compiled not used (there is none); `discovery model compile` writes it" in out
    assert main(["model", "compile", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "wrote model.compiled.pt" in out and str(tmp_path) not in out
    assert isinstance(load_model(folder, compiled=True)[0], CompiledResNet)
    assert main(["model", "check", str(folder)]) == 0
    assert "compiled yes: scoring loads it" in " ".join(capsys.readouterr().out.split())
    (folder / "model.safetensors").write_bytes(b"not weights")
    assert main(["model", "compile", str(folder)]) == 2           # the weights' hash refused
    assert "SHA-256" in capsys.readouterr().err
