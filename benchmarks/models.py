"""Models people bring: which attribution method works on which architecture, whether it
equals Captum, and seconds per ROI (docs/guide/own-model.md, "Architectures × methods").

Each network is a real MONAI architecture at a small width, untrained (seeded), saved as a
state dict and loaded the way a user's would be (``package.module:factory`` + weights +
``discovery.json``), plus the ResNet traced to a TorchScript archive.  For every method:

* **works**: ``predict_and_explain`` returns maps, or the refusal it gives instead;
* **equals Captum**: the tool's map against Captum on the bare network at the same target --
  ``gradcam`` against ``LayerGradCam`` (``relu_attributions=True``, trilinear upsampling) at
  the tool's layer, ``integrated_gradients`` against ``IntegratedGradients`` and
  ``occlusion`` against ``Occlusion`` with the tool's settings; largest absolute difference
  relative to the largest value (``-``: Captum has no such method);
* **s / ROI**: median seconds of one ROI over ``--repeat`` runs (the network is warm from
  the probe pass and the methods before), this machine.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/models.py [--repeat R] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from discovery.explain.methods import (  # noqa: E402
    BASELINE,
    CAM_METHODS,
    IG_STEPS,
    OCCLUSION_STRIDE,
    OCCLUSION_WINDOW,
    predict_and_explain,
)
from discovery.model.external import describe, load_any_model, load_factory  # noqa: E402

ARCHS = {
    "DenseNet121 (init 8, growth 4)": (
        "monai.networks.nets:DenseNet121",
        dict(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
             bn_size=2), 64, 1),
    "ResNet10 (widen 1/8, one logit)": (
        "monai.networks.nets:resnet10",
        dict(spatial_dims=3, n_input_channels=1, num_classes=1, widen_factor=0.125,
             conv1_t_stride=1, no_max_pool=True, shortcut_type="B"), 32, 0),
    "SE-ResNeXt (1-1-1-1, 3 logits)": (
        "monai.networks.nets:SENet",
        dict(spatial_dims=3, in_channels=1, block="se_resnetxt_bottleneck", layers=[1, 1, 1, 1],
             groups=8, reduction=16, dropout_prob=None, inplanes=16, downsample_kernel_size=1,
             input_3x3=False, num_classes=3), 64, 2),
    "EfficientNetBN b0": (
        "monai.networks.nets:EfficientNetBN",
        dict(model_name="efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=1,
             num_classes=2), 64, 1),
    "ViT (patch 8, 1 layer)": (
        "monai.networks.nets:ViT",
        dict(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=1,
             num_heads=2, classification=True, num_classes=2), 32, 1),
}
METHODS = CAM_METHODS + ("integrated_gradients", "occlusion")


def _load(folder: Path, name: str, spec, kwargs, edge, target, *, script: bool):
    import importlib

    module, fn = spec.split(":")
    torch.manual_seed(1)
    net = getattr(importlib.import_module(module), fn)(**kwargs).eval()
    side = {"roi_size_vox": [edge] * 3, "roi_spacing_mm": [1.5] * 3, "hu_window": [-1000, 400],
            "target_class": target, "factory_kwargs": kwargs}
    (folder / "discovery.json").write_text(json.dumps(side))
    if script:
        torch.jit.trace(net, torch.rand(2, 1, edge, edge, edge)).save(str(folder / "model.ts"))
        return net, *load_any_model(folder / "model.ts")
    torch.save(net.state_dict(), folder / "model.pt")
    return net, *load_factory(spec, weights=folder / "model.pt", sidecar=folder / "discovery.json")


def _captum(net, card, method, x, target):
    from captum.attr import (
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Occlusion,
    )

    if method == "gradcam":
        layer = dict(net.named_modules())[describe(card).layer]
        attr = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(attr, tuple(x.shape[2:]), "trilinear")[:, 0]
    def forward(x):  # the bare network's output tensor (MONAI's ViT returns a tuple)
        out = net(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    if method == "integrated_gradients":
        return IntegratedGradients(forward).attribute(x, baselines=BASELINE, target=target,
                                                  n_steps=IG_STEPS, method="gausslegendre")[:, 0]
    w, s = OCCLUSION_WINDOW, OCCLUSION_STRIDE
    return Occlusion(forward).attribute(x, sliding_window_shapes=(1, w, w, w), strides=(1, s, s, s),
                                    baselines=BASELINE, target=target)[:, 0]


def _row(net, model, card, method, edge, target, repeat):
    x = torch.rand((1, 1, edge, edge, edge), generator=torch.Generator().manual_seed(1))
    times, maps = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        try:
            maps = predict_and_explain(model, x, method=method)[1]
        except ValueError as exc:
            return {"works": False, "why": str(exc).split(": ", 1)[-1][:90], "equals": "",
                    "s": None}
        times.append(time.perf_counter() - t0)
    equals = "-"
    if method in ("gradcam", "integrated_gradients", "occlusion") and not isinstance(
            net, torch.jit.ScriptModule):
        ref = _captum(net, card, method, x, target).detach().numpy()
        scale = max(float(abs(ref).max()), 1e-12)
        equals = f"{float(abs(maps - ref).max()) / scale:.0e}"
    return {"works": True, "why": "", "equals": equals, "s": statistics.median(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1,
                    help="timed runs per method (the network is warm from the probe)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--only", default=None, metavar="TEXT",
                    help="only the models whose name contains TEXT (e.g. ViT)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(n, *a, False) for n, a in ARCHS.items()]
        cases.append(("ResNet10 as TorchScript", *ARCHS["ResNet10 (widen 1/8, one logit)"], True))
        cases = [c for c in cases if args.only is None or args.only.lower() in c[0].lower()]
        for i, (name, spec, kwargs, edge, target, script) in enumerate(cases):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            net, model, card = _load(folder, name, spec, kwargs, edge, target, script=script)
            probe = describe(card)
            layer = (f"{probe.layer} ({'x'.join(map(str, probe.grid))})" if probe.layer
                     else "none")
            for method in METHODS:
                row = {"model": name, "roi": edge, "layer": layer, "method": method,
                       **_row(net, model, card, method, edge, target, args.repeat)}
                rows.append(row)
                seconds = "" if row["s"] is None else f"{row['s']:.3f}"
                print(f"{name:34} {edge:3}^3 {layer:34} {method:22} "
                      f"{'yes' if row['works'] else 'refused':8} {row['equals']:>6} {seconds}",
                      flush=True)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
