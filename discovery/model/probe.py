"""What a network people bring does, found from one probe pass, and the wrapper that adapts it.

The rest of the tool expects a classifier that returns two logits whose softmax is
``(P(benign), P(malignant))``, and a Grad-CAM layer named by a dotted module name.  A network
brought from elsewhere may instead return one logit (sigmoid), several logits (softmax, the
malignant class at some index) or probabilities, and its Grad-CAM layer is rarely stated.

:func:`probe_network` runs the network once on a random ROI batch (two ROIs of the sidecar's
shape, values in [0, 1]) with a forward hook on every module, and from the recorded outputs
decides

* the output convention: ``"logit"`` (one output, sigmoid), ``"logits"`` (two or more,
  softmax) or ``"probabilities"`` (outputs in [0, 1] that sum to one per row, or a final
  ``Sigmoid`` / ``Softmax`` module; or the sidecar says so);
* the Grad-CAM layer: the sidecar's, or the **last module whose output is still a 3-D grid**
  ``(N, C, d, h, w)`` with more than one cell and that runs once per forward pass -- the layer
  global pooling follows.  When the grid is turned into a token sequence after that module
  (a vision transformer: the patch embedding's grid becomes ``(N, tokens, features)``) there is
  no such layer, and the CAM methods are refused with a message naming what works.

:class:`ExternalClassifier` contains the user's network unchanged (as ``net``) and returns the
two logits ``[a, b]`` with ``softmax([a, b])[1]`` equal to the network's P(malignant):

==================  ==========================================  ==============================
network returns     P(malignant)                                 ``[a, b]``
==================  ==========================================  ==============================
one logit ``z``     ``sigmoid(z)``                               ``[0, z]``
logits ``y``        ``softmax(y)[t]``                            ``[logsumexp(y_{j != t}), y_t]``
probabilities       ``p_t`` (one output: ``p``)                  ``[log(1 - p_t), log p_t]``
==================  ==========================================  ==============================

So the gradient of the tool's target logit ``b`` is the gradient of the network's own logit
``y_t`` (or ``z``): Grad-CAM through the wrapper equals Captum's ``LayerGradCam`` on the bare
network with ``target=t``.  With probabilities it is the gradient of ``log p_t``.  A network
that returns a tuple (MONAI's ViT: ``(logits, hidden_states)``) is read by its first element.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from data_tools.errors import ModelError

__all__ = [
    "INPUT_LAYER",
    "OUTPUTS",
    "ExternalClassifier",
    "Probe",
    "count_parameters",
    "probe_network",
    "seconds_per_roi",
]

#: Output conventions a sidecar may state (``"output"``) or the probe detects.
OUTPUTS = ("logit", "logits", "probabilities")
#: The wrapper's identity module on the network's input: the layer whose activations the
#: pipeline records when the network has no Grad-CAM layer (Integrated Gradients, occlusion).
INPUT_LAYER = "input_grid"
_PROB_MODULES = (torch.nn.Sigmoid, torch.nn.Softmax)
_EPS = 1e-7


def _first_tensor(out):
    """The output tensor of a module (the first element of a tuple or list), else None."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


class ExternalClassifier(torch.nn.Module):
    """A user's classifier, contained unchanged, seen as the tool's two-logit classifier.

    Parameters
    ----------
    net : torch.nn.Module
        The network (any module, a TorchScript archive included); kept as ``self.net``.
    output : str
        One of :data:`OUTPUTS` (module docstring).
    target_class : int
        Index of the malignant class among the network's outputs.
    cam_layer : str
        Dotted name (inside this wrapper: ``"net.<name>"``) of the Grad-CAM layer; when the
        network has none, :data:`INPUT_LAYER`, whose activations are the input itself.
    cam_refusal : str, optional
        Why the CAM methods do not apply (no 3-D grid layer, a TorchScript archive);
        :func:`discovery.explain.methods.predict_and_explain` raises it for them.
    """

    def __init__(self, net: torch.nn.Module, *, output: str, target_class: int,
                 cam_layer: str = INPUT_LAYER, cam_refusal: str | None = None):
        super().__init__()
        if output not in OUTPUTS:
            raise ModelError(f"output convention must be one of {', '.join(OUTPUTS)}; "
                             f"received {output!r}")
        setattr(self, INPUT_LAYER, torch.nn.Identity())
        self.net = net
        self.output = output
        self.target_class = int(target_class)
        self.cam_layer = cam_layer
        self.cam_refusal = cam_refusal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _first_tensor(self.net(getattr(self, INPUT_LAYER)(x)))
        t = self.target_class
        if self.output == "logit":
            z = y[:, 0]
            return torch.stack([torch.zeros_like(z), z], dim=1)
        if self.output == "logits":
            others = torch.cat([y[:, :t], y[:, t + 1:]], dim=1)
            return torch.stack([torch.logsumexp(others, dim=1), y[:, t]], dim=1)
        p = y[:, t].clamp(_EPS, 1.0 - _EPS)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


@dataclass(frozen=True)
class Probe:
    """What one probe pass found (see the module docstring).

    Attributes
    ----------
    n_outputs : int
        The network's output channels ``C`` (its output is ``(N, C)``).
    output : str
        The convention, one of :data:`OUTPUTS`.
    output_from : str
        ``"sidecar"`` or what the probe saw (``"values"``, ``"final Sigmoid"``, ...).
    layer : str or None
        The Grad-CAM layer inside the network (its own dotted name), or None.
    layer_from : str
        ``"sidecar"``, ``"auto"`` or ``""`` (none).
    grid : tuple of int
        The layer's grid ``(d, h, w)``; empty without a layer.
    channels : int
        The layer's channels (0 without a layer).
    refusal : str or None
        Why the CAM methods do not apply, when they do not.
    grid_layers : tuple of str
        Every module with a 3-D grid output of more than one cell that runs once, in order
        (the candidates a wrong ``gradcam_layer`` is shown).
    """

    n_outputs: int
    output: str
    output_from: str
    layer: str | None
    layer_from: str
    grid: tuple[int, ...] = ()
    channels: int = 0
    refusal: str | None = None
    grid_layers: tuple[str, ...] = field(default_factory=tuple)


def _record(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, dict]:
    """Run *net* on *x* with a hook on every submodule: ``(output, events, calls)``, events
    ``(name, module, shape or None)`` in the order the modules finished."""
    events: list[tuple[str, torch.nn.Module, tuple | None]] = []
    calls: dict[str, int] = {}
    handles = []

    def hook_for(name):
        def hook(mod, _inp, out):
            t = _first_tensor(out)
            calls[name] = calls.get(name, 0) + 1
            events.append((name, mod, None if t is None else tuple(t.shape)))
        return hook

    if not isinstance(net, torch.jit.ScriptModule):
        for name, mod in net.named_modules():
            if name:
                handles.append(mod.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in handles:
            h.remove()
    return out, events, calls


def _grid_layers(events, calls) -> list[tuple[int, str, tuple]]:
    return [(i, name, shape) for i, (name, _m, shape) in enumerate(events)
            if shape is not None and len(shape) == 5 and math.prod(shape[2:]) > 1
            and calls[name] == 1]


def _auto_layer(events, calls, what: str) -> tuple[str | None, tuple | None, str | None]:
    """``(layer, shape, refusal)``: the last 3-D grid module, unless tokens follow it."""
    grids = _grid_layers(events, calls)
    tail = "use integrated_gradients or occlusion, which work on any network, or name a layer " \
           "with gradcam_layer in the sidecar discovery.json"
    if not grids:
        return None, None, (f"{what} has no module whose output is a 3-D grid (N, C, d, h, w) of "
                            f"more than one cell, so the Grad-CAM family does not apply; {tail}")
    i, name, shape = grids[-1]
    first = next((j for j, (_n, _m, s) in enumerate(events) if s is not None and len(s) in (3, 4)),
                 None)
    if first is not None and any(
            s is not None and len(s) in (3, 4) for _n, _m, s in events[i + 1:]):
        tokens = events[first][0]
        _i, name, shape = next((g for g in reversed(grids) if g[0] < first), grids[-1])
        return None, None, (f"{what} turns its last 3-D grid ({name!r}, {_grid_text(shape)}) into "
                            f"a token sequence (module {tokens!r}) before it classifies, as a "
                            f"vision transformer does: no layer keeps a grid up to global "
                            f"pooling, so the Grad-CAM family does not apply; {tail}")
    return name, shape, None


def _grid_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape[2:]) + " grid"


def _named_layer(events, calls, layer: str, what: str, sidecar: str) -> tuple:
    """The sidecar's ``gradcam_layer`` (with or without the ``net.`` prefix), checked."""
    name = layer.removeprefix("net.")
    shapes = {n: s for n, _m, s in events}
    candidates = ", ".join(n for _i, n, _s in _grid_layers(events, calls)) or "(none)"
    if name not in shapes:
        raise ModelError(f"{sidecar} names gradcam_layer {layer!r}, but {what} has no module of "
                         f"that name that runs; modules with a 3-D grid output: {candidates}. "
                         "Use one of them, or leave gradcam_layer out to choose automatically",
                         path=None)
    shape = shapes[name]
    if shape is None or len(shape) != 5:
        raise ModelError(f"{sidecar} names gradcam_layer {layer!r}, whose output has shape "
                         f"{shape} rather than a 3-D grid (N, C, d, h, w); modules with a 3-D "
                         f"grid output: {candidates}")
    if calls[name] != 1:
        raise ModelError(f"{sidecar} names gradcam_layer {layer!r}, which runs {calls[name]} "
                         f"times per forward pass (a shared module); hooks would see its last "
                         f"call only. Choose one of: {candidates}")
    return name, shape


def _convention(y: torch.Tensor, events, stated: str | None) -> tuple[str, str]:
    n = int(y.shape[1])
    if stated is not None:
        if stated == "logits" and n == 1:
            stated = "logit"
        return stated, "sidecar"
    last = next((m for _n, m, s in reversed(events) if s is not None and not list(m.children())),
                None)
    if isinstance(last, _PROB_MODULES):
        return "probabilities", f"final {type(last).__name__} module"
    in_unit = bool(((y >= 0) & (y <= 1)).all())
    if n >= 2 and in_unit and bool(torch.allclose(y.sum(dim=1), torch.ones(len(y)), atol=1e-4)):
        return "probabilities", "the probe's outputs (in [0, 1], rows sum to 1)"
    return ("logit" if n == 1 else "logits"), "the probe's output values"


def probe_network(net: torch.nn.Module, *, roi_size_vox, target_class: int,
                  output: str | None = None, layer: str | None = None,
                  what: str = "the network", sidecar: str = "the sidecar",
                  channels: int = 1) -> Probe:
    """One forward pass of *net* on two random ROIs: output convention and Grad-CAM layer.

    Parameters
    ----------
    net : torch.nn.Module
        In ``eval()`` mode.  A TorchScript archive is run without hooks (no layer; the CAM
        methods are refused for it).
    roi_size_vox : 3 ints
        The ROI shape; the probe input is ``(2, channels, *roi_size_vox)`` uniform in [0, 1]
        (seeded; one channel for a sidecar's single HU window).
    target_class : int
        Index of the malignant class; checked against the output width.
    output, layer : str, optional
        The sidecar's ``output`` and ``gradcam_layer``.
    what, sidecar : str
        How messages name the network and the sidecar file.

    Raises
    ------
    ModelError
        The network fails on the input, returns an output not shaped ``(N, C)``, the target is
        out of range, or the named layer does not exist / has no 3-D grid.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, int(channels), *(int(s) for s in roi_size_vox)), generator=gen)
    try:
        out, events, calls = _record(net, x)
    except Exception as exc:  # the user's code: any failure is a model problem
        raise ModelError(f"{what} fails on an input of shape {tuple(x.shape)} (a batch of 2 ROIs "
                         f"of roi_size_vox {list(x.shape[2:])}, {channels} channel(s), values in "
                         f"[0, 1]): "
                         f"{type(exc).__name__}: {str(exc)[:300]}. Check roi_size_vox in "
                         f"{sidecar} and that the network takes one input channel") from None
    y = _first_tensor(out)
    if y is None or y.ndim != 2 or y.shape[0] != 2 or y.shape[1] < 1:
        got = "no tensor" if y is None else f"shape {tuple(y.shape)}"
        raise ModelError(f"{what} returned {got} for a batch of 2 ROIs; a classifier must return "
                         f"(N, C): one logit, C logits or C probabilities per ROI (a "
                         f"segmentation network's (N, C, d, h, w) map cannot be explained here)")
    n = int(y.shape[1])
    if not 0 <= int(target_class) < n:
        raise ModelError(f"{sidecar} gives target_class {target_class}, but {what} returns {n} "
                         f"output(s): target_class must be 0..{n - 1}, the index of the malignant "
                         "class (0 for a one-output network)")
    conv, conv_from = _convention(y.float(), events, output)
    scripted = isinstance(net, torch.jit.ScriptModule)
    grids = tuple(name for _i, name, _s in _grid_layers(events, calls))
    if scripted:
        refusal = ("a TorchScript archive: hooks do not reach inside it, so the Grad-CAM family "
                   "(gradcam, gradcam++, hirescam, layercam and the fused methods) does not "
                   "apply; use integrated_gradients or occlusion, or bring the network as a "
                   "MONAI bundle or module:factory with a state dict")
        return Probe(n, conv, conv_from, None, "", refusal=refusal)
    if layer:
        name, shape = _named_layer(events, calls, layer, what, sidecar)
        return Probe(n, conv, conv_from, name, "sidecar", tuple(shape[2:]), int(shape[1]),
                     grid_layers=grids)
    name, shape, refusal = _auto_layer(events, calls, what)
    if name is None:
        return Probe(n, conv, conv_from, None, "", refusal=refusal, grid_layers=grids)
    return Probe(n, conv, conv_from, name, "auto", tuple(shape[2:]), int(shape[1]),
                 grid_layers=grids)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameter values (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def seconds_per_roi(model: torch.nn.Module, roi_size_vox, *, repeats: int = 3,
                    channels: int = 1) -> tuple[float, float]:
    """``(forward, forward + backward)`` seconds for one ROI on this machine (median of
    *repeats* after one warm-up run).  Forward + backward is the cost of a CAM method;
    Integrated Gradients costs about its steps times that, occlusion one forward per window."""
    x = torch.rand((1, int(channels), *(int(s) for s in roi_size_vox)),
                   generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            model(x)

    def both():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(_first_tensor(model(xi))[:, -1].sum(), xi)

    out = []
    for fn in (forward, both):
        fn()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out.append(sorted(times)[len(times) // 2])
    return out[0], out[1]
