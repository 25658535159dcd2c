"""Models people bring (discovery.model.external): real MONAI architectures at small widths,
a MONAI bundle written with ConfigParser, TorchScript, module:factory, and every bad input.

For every CAM-capable network the tool's Grad-CAM equals Captum's ``LayerGradCam`` (ReLU,
trilinear upsampling to the ROI) at the same layer, through the output-convention wrapper.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_tools.errors import ModelError
from discovery.explain.methods import predict_and_explain
from discovery.model.external import (
    describe,
    load_any_model,
    load_bundle,
    load_factory,
    read_sidecar,
)

SIDE = {"roi_size_vox": [32, 32, 32], "roi_spacing_mm": [1.5, 1.5, 1.5],
        "hu_window": [-1000, 400], "target_class": 1}

#: name -> (factory, kwargs, ROI edge, target): small widths; ROIs big enough that the last
#: stage keeps a grid of more than one cell.
ARCHS = {
    "densenet121": ("monai.networks.nets:DenseNet121",
                    dict(spatial_dims=3, in_channels=1, out_channels=2, init_features=8,
                         growth_rate=4, bn_size=2), 64, 1),
    "resnet10-one-logit": ("monai.networks.nets:resnet10",
                           dict(spatial_dims=3, n_input_channels=1, num_classes=1,
                                widen_factor=0.125, conv1_t_stride=1, no_max_pool=True,
                                shortcut_type="B"), 32, 0),
    "seresnext": ("monai.networks.nets:SENet",
                  dict(spatial_dims=3, in_channels=1, block="se_resnetxt_bottleneck",
                       layers=[1, 1, 1, 1], groups=8, reduction=16, dropout_prob=None,
                       inplanes=16, downsample_kernel_size=1, input_3x3=False, num_classes=3),
                  64, 2),
    "efficientnet-b0": ("monai.networks.nets:EfficientNetBN",
                        dict(model_name="efficientnet-b0", pretrained=False, spatial_dims=3,
                             in_channels=1, num_classes=2), 64, 1),
}


def _net(name, seed=1):  # a seed whose untrained nets give non-empty Grad-CAM maps
    import importlib

    spec, kwargs, _edge, _t = ARCHS[name]
    mod, fn = spec.split(":")
    torch.manual_seed(seed)
    return getattr(importlib.import_module(mod), fn)(**kwargs).eval()


def _sidecar(folder, **fields):
    data = {**SIDE, **fields}
    data = {k: v for k, v in data.items() if v is not None}
    path = folder / "discovery.json"
    path.write_text(json.dumps(data))
    return path


def _factory_model(tmp_path, name, **side):
    spec, kwargs, edge, target = ARCHS[name]
    net = _net(name)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    path = _sidecar(tmp_path, roi_size_vox=[edge] * 3, target_class=target,
                    factory_kwargs=kwargs, **side)
    model, card = load_factory(spec, weights=tmp_path / "model.pt", sidecar=path)
    return net, model, card


def _rois(edge, n=2, seed=1):
    return torch.rand((n, 1, edge, edge, edge), generator=torch.Generator().manual_seed(seed))


def _captum_gradcam(net, layer_name, x, target):
    from captum.attr import LayerAttribution, LayerGradCam

    layer = dict(net.named_modules())[layer_name]
    attr = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(x.shape[2:]), interpolate_mode="trilinear")[:, 0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_gradcam_equals_captum_layergradcam(tmp_path, name):
    net, model, card = _factory_model(tmp_path, name)
    _spec, _kw, edge, target = ARCHS[name]
    probe = describe(card)
    assert probe.layer_from == "auto" and probe.refusal is None
    assert card.gradcam_layer == f"net.{probe.layer}" and min(probe.grid) > 1
    x = _rois(edge)
    probs, maps, info = predict_and_explain(model, x, method="gradcam")
    assert info.layer == card.gradcam_layer and info.native_shape == probe.grid
    with torch.no_grad():
        y = net(x)
    expected = torch.sigmoid(y[:, 0]) if y.shape[1] == 1 else torch.softmax(y, 1)[:, target]
    np.testing.assert_allclose(probs[:, 1], expected.numpy(), rtol=1e-5, atol=1e-6)
    reference = _captum_gradcam(net, probe.layer, x, target).detach().numpy()
    assert reference.max() > 0  # a real map, not two empty ones
    np.testing.assert_allclose(maps, reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_one_logit_and_two_logit_heads_give_the_models_own_probability(tmp_path):
    (tmp_path / "a").mkdir()
    net, model, card = _factory_model(tmp_path / "a", "resnet10-one-logit")
    assert describe(card).output == "logit" and card.architecture["n_outputs"] == 1
    x = _rois(32, n=3)
    with torch.no_grad():
        z = net(x)[:, 0]
        out = model(x)
    np.testing.assert_allclose(torch.softmax(out, 1)[:, 1], torch.sigmoid(z), rtol=1e-6)
    assert torch.equal(out[:, 1], z)  # the target logit is the network's own logit


def _prob_net():
    """A softmax-ending classifier (probabilities out), as a module:factory in this file."""
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))


def test_probabilities_are_detected_and_mapped(tmp_path):
    torch.manual_seed(0)
    net = _prob_net().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    side = _sidecar(tmp_path, target_class=2)
    model, card = load_factory(f"{__name__}:_prob_net", weights=tmp_path / "model.pt",
                               sidecar=side)
    probe = describe(card)
    assert probe.output == "probabilities" and probe.output_from == "final Softmax module"
    assert card.gradcam_layer == "net.1"  # the ReLU after the conv: the last 3-D grid
    x = _rois(32)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(model(x), 1)[:, 1], net(x)[:, 2], rtol=1e-5)


def _sigmoid_net():
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 1), torch.nn.Sigmoid())


def test_one_probability_and_the_sidecars_word_win(tmp_path):
    torch.manual_seed(0)
    net = _sigmoid_net().eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    model, card = load_factory(f"{__name__}:_sigmoid_net", weights=tmp_path / "model.pt",
                               sidecar=_sidecar(tmp_path, target_class=0))
    assert (describe(card).output, describe(card).output_from) == ("probabilities",
                                                                  "final Sigmoid module")
    x = _rois(32)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(model(x), 1)[:, 1], net(x)[:, 0], rtol=1e-5)
    _model, card = load_factory(f"{__name__}:_sigmoid_net", weights=tmp_path / "model.pt",
                                sidecar=_sidecar(tmp_path, target_class=0, output="logits"))
    assert (describe(card).output, describe(card).output_from) == ("logit", "sidecar")


def _bundle(root, *, network_def=True, num_classes=2, weights_classes=None, fmt="json"):
    """A MONAI bundle written with MONAI's own ConfigParser: configs + state dict + sidecar."""
    from monai.bundle import ConfigParser

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {"imports": ["$import torch"], "bundle_root": ".", "spatial_dims": 3,
              "device": "$torch.device('cpu')", "network": "$@network_def.to(@device)"}
    if network_def:
        config["network_def"] = {"_target_": "monai.networks.nets.resnet10",
                                 "spatial_dims": "@spatial_dims", "n_input_channels": 1,
                                 "num_classes": num_classes, "widen_factor": 0.125,
                                 "conv1_t_stride": 1, "no_max_pool": True, "shortcut_type": "A"}
    ConfigParser.export_config_file(config, str(root / "configs" / f"inference.{fmt}"), fmt=fmt)
    meta = {"version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
        "outputs": {"pred": {"type": "probabilities", "num_channels": num_classes,
                             "channel_def": {"0": "benign", "1": "malignant"}}}}}
    ConfigParser.export_config_file(meta, str(root / "configs" / "metadata.json"))
    from monai.networks.nets import resnet10

    torch.manual_seed(0)
    net = resnet10(spatial_dims=3, n_input_channels=1, num_classes=weights_classes or num_classes,
                   widen_factor=0.125, conv1_t_stride=1, no_max_pool=True, shortcut_type="A")
    torch.save(net.eval().state_dict(), root / "models" / "model.pt")
    _sidecar(root)
    return root


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_bundle_loads_with_config_parser(tmp_path, fmt):
    bundle = _bundle(tmp_path / "b", fmt=fmt)
    model, card = load_any_model(bundle)
    arch = card.architecture
    assert arch["source"] == "monai-bundle" and arch["config"] == f"inference.{fmt}"
    assert arch["classes"] == ["benign", "malignant"] and card.gradcam_layer == "net.layer4"
    assert card.roi_size_vox == (32, 32, 32) and card.hu_window == (-1000.0, 400.0)
    x = _rois(32)
    probs, maps, info = predict_and_explain(model, x, method="gradcam")
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.softmax(model.net(x), 1), rtol=1e-5)
    assert maps.shape == (2, 32, 32, 32) and info.layer == "net.layer4"


def _one_case(root):
    from data_tools.nifti import save_nifti
    from data_tools.volume import Mask, Volume, affine_from_spacing

    case = root / "CASE_A"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hu = rng.normal(-850, 20, (40, 48, 48)).astype(np.float32)
    zz, yy, xx = np.ogrid[:40, :48, :48]
    ball = (zz - 20) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2 <= 16
    hu[ball] = 40
    aff = affine_from_spacing((1.5, 1.5, 1.5))
    save_nifti(Volume(hu, aff), case / "ct.nii.gz")
    save_nifti(Mask(ball.astype(np.int16), aff), case / "mask.nii.gz")
    return root


def test_score_runs_on_a_bundle(tmp_path):
    from discovery.batch.score import score_folder

    bundle = _bundle(tmp_path / "bundle")
    summary = score_folder(_one_case(tmp_path / "in"), tmp_path / "out", model_dir=bundle)
    assert summary.n_ok == 1 and summary.n_nodules == 1 and summary.n_failed == 0


def _small_net():
    """A one-logit 3-D CNN small enough to trace and explain in a second."""
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 1))


def test_torchscript_refuses_gradcam_and_explains_with_ig_and_occlusion(tmp_path):
    torch.manual_seed(0)
    net = _small_net().eval()
    torch.jit.trace(net, _rois(32, n=1)).save(str(tmp_path / "model.ts"))
    _sidecar(tmp_path, target_class=0, gradcam_layer="layer4")
    model, card = load_any_model(tmp_path / "model.ts")
    assert card.architecture["source"] == "torchscript" and describe(card).layer is None
    x = _rois(32, n=1)
    with pytest.raises(ValueError, match="TorchScript.*integrated_gradients or occlusion"):
        predict_and_explain(model, x, method="gradcam")
    probs, ig, info = predict_and_explain(model, x, method="integrated_gradients",
                                          return_activations=True)[:3]
    with torch.no_grad():
        np.testing.assert_allclose(probs[:, 1], torch.sigmoid(net(x)[:, 0]), rtol=1e-5)
    assert info.signed and ig.shape == (1, 32, 32, 32) and np.abs(ig).max() > 0
    assert predict_and_explain(model, x, method="occlusion")[1].shape == (1, 32, 32, 32)


def test_vit_has_no_cam_layer_but_works_with_the_other_methods(tmp_path):
    pytest.importorskip("einops")  # MONAI's ViT needs it
    kwargs = dict(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64,
                  num_layers=1, num_heads=2, classification=True, num_classes=2)
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    torch.save(ViT(**kwargs).state_dict(), tmp_path / "model.pt")
    side = _sidecar(tmp_path, factory_kwargs=kwargs)
    model, card = load_factory("monai.networks.nets:ViT", weights=tmp_path / "model.pt",
                               sidecar=side)
    refusal = describe(card).refusal
    assert "token sequence" in refusal and "patch_embedding" in refusal
    x = _rois(32, n=1)
    for method in ("gradcam", "layercam", "gradcam-refined"):
        with pytest.raises(ValueError, match="integrated_gradients or occlusion"):
            predict_and_explain(model, x, method=method)
    for method in ("integrated_gradients", "occlusion"):
        _probs, maps, _info, act = predict_and_explain(model, x, method=method,
                                                      return_activations=True)
        assert maps.shape == (1, 32, 32, 32) and act.shape == (1, 1, 32, 32, 32)


def test_score_runs_on_a_vit_module_folder_with_occlusion_and_refuses_gradcam(tmp_path):
    pytest.importorskip("einops")
    from monai.networks.nets import ViT

    from discovery.batch.score import score_folder
    from discovery.pipeline import ScoreSettings

    kwargs = dict(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64,
                  num_layers=1, num_heads=2, classification=True, num_classes=2)
    folder = tmp_path / "vit"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(ViT(**kwargs).state_dict(), folder / "model.pt")
    _sidecar(folder, factory="monai.networks.nets:ViT", factory_kwargs=kwargs)
    cases = _one_case(tmp_path / "in")
    summary = score_folder(cases, tmp_path / "out", model_dir=folder,
                           settings=ScoreSettings(method="occlusion"))
    assert summary.n_ok == 1 and summary.n_failed == 0
    with pytest.raises(ValueError, match="gradcam does not apply.*integrated_gradients or occlusion"):
        score_folder(cases, tmp_path / "out2", model_dir=folder)


def test_model_check_prints_what_the_tool_understood(tmp_path, capsys):
    from discovery.cli import main

    bundle = _bundle(tmp_path / "b")
    assert main(["model", "check", str(bundle)]) == 0
    out = capsys.readouterr().out
    for needle in ("1 x 32 x 32 x 32 voxels at 1.5 x 1.5 x 1.5 mm", "HU -1000 .. 400 -> [0, 1]",
                   "2 logits: P(malignant) = softmax[1]", "0 benign, 1 malignant",
                   "net.layer4 (auto", "on a 4x4x4 grid (12 x 12 x 12 mm cells)",
                   "parameters", "s forward", "gradcam, gradcam++", "occlusion"):
        assert needle in out, (needle, out)


def test_model_check_of_a_factory_spec_and_of_torchscript(tmp_path, capsys):
    from discovery.cli import main

    net = _net("resnet10-one-logit")
    torch.save(net.state_dict(), tmp_path / "w.pt")
    side = _sidecar(tmp_path, target_class=0, factory_kwargs=ARCHS["resnet10-one-logit"][1])
    assert main(["model", "check", "monai.networks.nets:resnet10", "--weights",
                 str(tmp_path / "w.pt"), "--sidecar", str(side)]) == 0
    out = capsys.readouterr().out
    assert "one logit: P(malignant) = sigmoid" in out and "net.layer4 (auto" in out
    torch.jit.trace(_small_net().eval(), _rois(32)).save(str(tmp_path / "model.ts"))
    assert main(["model", "check", str(tmp_path / "model.ts")]) == 0
    out = capsys.readouterr().out
    assert "TorchScript archive 'model.ts'" in out and "Grad-CAM    none: a TorchScript" in out
    assert "methods     none of the CAM methods; integrated_gradients" in out
    assert main(["model", "check", str(tmp_path / "nothing")]) == 2
    assert "none of: a model folder" in capsys.readouterr().err


# -- bad inputs: a domain error naming the file, the problem and the fix ---------------------

def test_bundle_without_network_def(tmp_path):
    bundle = _bundle(tmp_path / "b", network_def=False)
    with pytest.raises(ModelError, match=r"'inference.json' has no network_def.*_target_"):
        load_any_model(bundle)


def test_weights_that_do_not_fit_name_the_first_mismatching_key(tmp_path):
    bundle = _bundle(tmp_path / "b", num_classes=2, weights_classes=3)
    with pytest.raises(ModelError, match=r"'model.pt' do not fit.*first mismatch: 'fc.weight' "
                                         r"has shape \[3, 64\] in the file but \[2, 64\]"):
        load_bundle(bundle)


def test_output_of_unexpected_shape(tmp_path):
    torch.save(torch.nn.Conv3d(1, 2, 1).state_dict(), tmp_path / "model.pt")
    side = _sidecar(tmp_path, factory_kwargs={"in_channels": 1, "out_channels": 2,
                                              "kernel_size": 1})
    with pytest.raises(ModelError, match=r"returned shape \(2, 2, 32, 32, 32\).*\(N, C\)"):
        load_factory("torch.nn:Conv3d", weights=tmp_path / "model.pt", sidecar=side)


def test_a_layer_that_does_not_exist_lists_the_candidates(tmp_path):
    with pytest.raises(ModelError, match=r"'discovery.json' names gradcam_layer 'layer9'.*"
                                         r"3-D grid output: .*layer3, .*layer4"):
        _factory_model(tmp_path, "resnet10-one-logit", gradcam_layer="layer9")
    _network, _model, card = _factory_model(tmp_path, "resnet10-one-logit",
                                            gradcam_layer="net.layer3")
    assert card.gradcam_layer == "net.layer3" and describe(card).layer_from == "sidecar"


def test_target_class_out_of_range(tmp_path):
    bundle = _bundle(tmp_path / "b")
    _sidecar(bundle, target_class=2)
    with pytest.raises(ModelError, match=r"target_class 2.*returns 2 output\(s\).*0\.\.1"):
        load_any_model(bundle)


@pytest.mark.parametrize("change, needle", [
    ({"target_class": None}, "target_class is missing"),
    ({"roi_size_vox": [32, 32]}, "roi_size_vox must be a list of 3 positive integers"),
    ({"roi_spacing_mm": [1.5, 0, 1.5]}, "roi_spacing_mm must be a list of 3 positive numbers"),
    ({"hu_window": [400, -1000]}, "hu_window must be [low, high] with high > low"),
    ({"target_class": "malignant"}, "target_class must be the index"),
    ({"hu_windows": [0, 1]}, "hu_windows is not a sidecar field"),
    ({"output": "sigmoid"}, "output must be \"logits\" or \"probabilities\""),
])
def test_sidecar_with_missing_or_wrong_fields(tmp_path, change, needle):
    path = _sidecar(tmp_path, **change)
    with pytest.raises(ModelError) as err:
        read_sidecar(path)
    assert "'discovery.json'" in str(err.value) and needle in str(err.value)
    assert "e.g. {" in str(err.value)  # shows how a correct one looks


def test_missing_sidecar_and_pickles_that_need_more_are_refused(tmp_path):
    bundle = _bundle(tmp_path / "b")
    (bundle / "discovery.json").unlink()
    with pytest.raises(ModelError, match="no sidecar 'discovery.json'"):
        load_any_model(bundle)
    _sidecar(bundle)
    torch.save(_net("resnet10-one-logit"), bundle / "models" / "model.pt")  # a whole module
    with pytest.raises(ModelError, match=r"'model.pt' were refused: torch.load\(weights_only=True\)"
                                         r".*never unpickles code"):
        load_any_model(bundle)


def test_what_is_not_a_model_says_what_is(tmp_path):
    with pytest.raises(ModelError, match="none of: a model folder"):
        load_any_model(tmp_path)
    with pytest.raises(ModelError, match="needs --weights FILE and --sidecar FILE"):
        load_any_model("monai.networks.nets:resnet10")


def test_sanity_checks_a_bundle_and_randomises_its_own_stages(tmp_path):
    """`discovery sanity --model BUNDLE`: the cascade randomises the bundle network's stages
    (the wrapper looked through), and the faithfulness rows are stored."""
    from discovery.batch.sanity import run_sanity
    from discovery.batch.score import score_folder

    bundle = _bundle(tmp_path / "bundle")
    score_folder(_one_case(tmp_path / "in"), tmp_path / "out", model_dir=bundle)
    summary = run_sanity(tmp_path / "out", model_dir=bundle, methods=("gradcam",),
                         randomise=("gradcam",), steps=2, n_draws=1, n_random=1,
                         n_random_road=1)
    steps = list(summary.randomization["module"])
    assert steps[:3] == ["net.fc", "net.layer4", "net.layer3"] and steps[-1] == "net.conv1"
    assert len(summary.perturbation) == 1 and summary.n_nodules == 1
    with pytest.raises(ValueError, match="another model"):       # not the results' model
        run_sanity(tmp_path / "out", methods=("gradcam",), randomise=(), steps=2)


def test_a_sidecar_may_state_the_training_domain_and_a_bad_one_is_refused(tmp_path):
    domain = {"slice_thickness_mm": [0.5, 1.5], "pixel_spacing_mm": [0.5, 0.9],
              "nodule_diameter_mm": [4, 30], "roi_statistics": {}, "source": "our trial"}
    bundle = _bundle(tmp_path / "b")
    _sidecar(bundle, training_domain=domain)
    _, card = load_any_model(bundle)
    assert card.domain.slice_thickness_mm == (0.5, 1.5) and card.domain.source == "our trial"
    _sidecar(bundle, training_domain={**domain, "pixel_spacing_mm": [0.9]})
    with pytest.raises(ModelError, match=r"training_domain is not a training domain .*pixel_spacing_mm"):
        load_any_model(bundle)
