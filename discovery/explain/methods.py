"""Attribution maps for the nodule classifier.

Contract for every method: a float32 array ``(N, z, y, x)`` on the ROI grid holding *raw*
values (never min-max rescaled, never inverted), plus the provenance that
:class:`AttributionInfo` records (method, layer, target class, native resolution, sign).

Methods (cost per ROI in forward + backward passes, see docs/method/explanations.md):

=========================  ====================================================  =========
``gradcam``                ``ReLU(sum_c mean(dY/dA_c) A_c)``, Selvaraju et al.    1 F + 1 B
``gradcam++``              positive gradients weighted by the closed-form         1 F + 1 B
                           alpha of Chattopadhay et al. (exp-score form)
``hirescam``               ``ReLU(sum_c dY/dA_c * A_c)`` element-wise             1 F + 1 B
                           (Draelos & Carin), faithful to the layer's own grid
``layercam``               ``ReLU(sum_c ReLU(dY/dA_c) * A_c)`` (Jiang et al.),    1 F + 1 B
                           meant for earlier, finer layers
``layercam-fused``         LayerCAM at a fine and a coarse layer (default         1 F + 1 B
                           ``layer2`` and ``layer3``), each upsampled to the ROI,
                           **normalised per ROI** by its own maximum and scaled,
                           ``tanh(gamma * M_l / max M_l)`` with ``gamma = 2``,
                           then fused by the element-wise maximum (Jiang et al.
                           2021, eq. 9; unitless, in ``[0, tanh 2]``)
``gradcam-refined``        the coarse Grad-CAM map refined by the fine LayerCAM   1 F + 1 B
                           map: their geometric mean ``sqrt(G_coarse * L_fine)``
                           (both upsampled first; high only where both are; no
                           per-ROI normalisation, the square root keeps the
                           maps' units)
``integrated_gradients``   Captum IG from an all-air baseline (signed)            S F + S B
``occlusion``              Captum Occlusion, sliding cube of air (signed)         1 + W F
=========================  ====================================================  =========

The four CAM methods return non-negative maps upsampled trilinearly (``align_corners=False``)
from the layer's grid to the ROI size.  The two fused methods take ``layer="fine+coarse"``
(default :data:`FUSION_LAYERS`), record that string as the layer and the fine layer's grid as
the native shape, and return the coarse layer's activations with ``return_activations``.  Integrated Gradients and Occlusion return *signed*
voxel maps (``info.signed``); callers that need non-negative evidence (the alignment metrics)
must take the positive part themselves, explicitly.

Hooks are scoped to one call and to the calling thread: a forward hook is registered for the
duration of the forward pass only, and it records activations only when the hooked module runs
on the thread that registered it.  Two threads can therefore explain with one shared model at
the same time; the caller's model is never modified (no ``inplace`` flags switched, no mode
changed).  Captum's IG and Occlusion register no hooks on the model.
"""

from __future__ import annotations

import contextlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from discovery.explain.catalog import CAM_METHODS, FUSED_METHODS, IG_STEPS, METHODS

__all__ = ["AttributionInfo", "explain", "predict_and_explain", "resolve_layer", "layer_activations",
           "method_layer", "METHODS", "CAM_METHODS", "FUSED_METHODS", "FUSION_LAYERS",
           "FUSION_GAMMA", "IG_STEPS", "OCCLUSION_WINDOW", "OCCLUSION_STRIDE"]


#: The fused methods' default layers, fine first: 16^3 cells of 3 mm and 8^3 cells of 6 mm on
#: the demo model's 48 mm ROI.
FUSION_LAYERS = ("layer2", "layer3")
#: ``layercam-fused``: the scale of Jiang et al.'s ``tanh(gamma * M / max M)`` (their value).
FUSION_GAMMA = 2.0

#: Occlusion: cube edge and stride in ROI voxels (8 voxels = 12 mm at the demo's 1.5 mm).
OCCLUSION_WINDOW = 8
OCCLUSION_STRIDE = 4
#: Baseline of IG and Occlusion: 0.0 is -1000 HU (air) under the model's HU window, i.e.
#: "nothing there".  Stated here because the choice changes the maps.
BASELINE = 0.0


@dataclass(frozen=True)
class AttributionInfo:
    """Provenance recorded with every attribution map."""

    method: str
    layer: str
    target: int
    native_shape: tuple[int, int, int]
    roi_shape: tuple[int, int, int]
    upsampling: str = "trilinear"
    signed: bool = False


def resolve_layer(model: torch.nn.Module, layer: str | None) -> tuple[str, torch.nn.Module]:
    """Find the module named *layer* (dotted), or the model's ``cam_layer`` when None."""
    name = layer if layer is not None else getattr(model, "cam_layer", None)
    if name is None:
        raise ValueError(
            "no layer given and the model has no 'cam_layer' attribute; pass layer='...' "
            "(a dotted module name such as 'layer3')"
        )
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = ", ".join(n for n in modules if n and "." not in n)
        raise ValueError(f"model has no module {name!r}; top-level modules are: {candidates}")
    return name, modules[name]


def layer_activations(model: torch.nn.Module, rois, *, layer: str | None = None) -> np.ndarray:
    """Output of one layer for a batch of ROIs (no gradients).

    :func:`predict_and_explain` with ``return_activations=True`` gives the same feature maps
    from its own forward pass; use this only when no attribution is computed.

    Parameters
    ----------
    model : torch.nn.Module
        Used as it is (put it in ``eval()`` first); the hook is scoped like the CAM hooks.
    rois : Tensor, shape (N, C, z, y, x)
    layer : str, optional
        Dotted module name; default ``model.cam_layer``.

    Returns
    -------
    ndarray, float32, shape (N, C, d, h, w)
        The layer's feature maps on its own (coarse) grid.
    """
    rois = _check_rois(rois, model)
    layer_name, module = resolve_layer(model, layer)
    with _capture(module, layer_name) as captured, torch.no_grad():
        model(rois.detach().to(dtype=torch.float32))
    return captured["act"].numpy().astype(np.float32, copy=False)


@contextmanager
def _capture(module: torch.nn.Module, layer_name: str, *, pass_on: bool = False):
    """Record *module*'s output during the ``with`` block, on the calling thread only.

    ``pass_on``: hand a fresh clone downstream and keep it (the CAM methods differentiate
    with respect to it, and later in-place ops cannot alter it); otherwise keep a detached
    copy.  Raises RuntimeError when the module did not run.
    """
    owner = threading.get_ident()
    captured: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        if threading.get_ident() != owner:
            return None
        if pass_on:
            out = out.clone()
            captured["act"] = out
            return out
        captured["act"] = out.detach().clone()
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
    if "act" not in captured:
        raise RuntimeError(f"layer {layer_name!r} did not run during the forward pass")


def _input_channels(model: torch.nn.Module) -> int | None:
    """Channels the model's first convolution (or patch embedding) takes, if it has one."""
    declared = getattr(model, "input_channels", None)   # a compiled network says so
    if isinstance(declared, int):
        return declared
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            return int(module.in_channels)
    return None


def _check_rois(rois, model: torch.nn.Module) -> torch.Tensor:
    if not isinstance(rois, torch.Tensor):
        rois = torch.as_tensor(np.asarray(rois))
    channels = _input_channels(model)
    if rois.ndim != 5 or rois.shape[1] < 1 or channels not in (None, rois.shape[1]):
        raise ValueError(
            "rois must be a float tensor (N, C, z, y, x), C the model's input channels (its "
            f"card's HU windows; this model's first layer takes {channels or 'any number'}); "
            f"received shape {tuple(rois.shape)}"
        )
    if not torch.is_floating_point(rois):
        raise ValueError(f"rois must be floating point; received dtype {rois.dtype}")
    return rois


def _cam_weights(method: str, act: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Per-voxel channel weights ``w`` so that the map is ``ReLU(sum_c w_c * A_c)``."""
    space = tuple(range(2, grads.ndim))
    if method == "gradcam":
        return grads.mean(dim=space, keepdim=True)
    if method == "hirescam":
        return grads
    if method == "layercam":
        return torch.relu(grads)
    # Grad-CAM++ with the exponential-score closed form used by its authors' code:
    # alpha = g^2 / (2 g^2 + sum_space(A) g^3), weights = sum_space(alpha * ReLU(g)).
    g2, g3 = grads.pow(2), grads.pow(3)
    denom = 2 * g2 + act.sum(dim=space, keepdim=True) * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(g2))
    return (alpha * torch.relu(grads)).sum(dim=space, keepdim=True)


def _cam_maps(model, rois, specs: list[tuple[str, str | None]], target):
    """Logits and, per ``(method, layer)`` in *specs*, the upsampled CAM ``(N, z, y, x)``, its
    layer name, native grid and the layer's activations, from one forward + backward."""
    layers = [resolve_layer(model, layer) for _, layer in specs]
    x = rois.detach().to(dtype=torch.float32).requires_grad_(True)
    with contextlib.ExitStack() as stack, torch.enable_grad():
        captures = [stack.enter_context(_capture(module, name, pass_on=True))
                    for name, module in layers]
        logits = model(x)
    _check_target(target, logits)
    acts = [c["act"] for c in captures]
    grads = torch.autograd.grad(logits[:, target].sum(), acts)
    out = []
    with torch.no_grad():
        for (method, _), (name, _), act, grad in zip(specs, layers, acts, grads):
            cam = torch.relu((_cam_weights(method, act, grad) * act).sum(dim=1, keepdim=True))
            native = tuple(int(s) for s in cam.shape[2:])
            cam = F.interpolate(cam, size=tuple(rois.shape[2:]), mode="trilinear",
                                align_corners=False)
            out.append((cam[:, 0], name, native, act.detach()))
    return logits.detach(), out


def _cam(model, rois, method, layer, target):
    logits, [(cam, layer_name, native, act)] = _cam_maps(model, rois, [(method, layer)], target)
    return logits, cam, layer_name, native, act


def _fusion_layers(layer: str | None) -> tuple[str, str]:
    """``(fine, coarse)`` from ``"fine+coarse"`` (None: :data:`FUSION_LAYERS`)."""
    if layer is None:
        return FUSION_LAYERS
    parts = tuple(p.strip() for p in str(layer).split("+"))
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError("the fused methods take layer='fine+coarse', two different module "
                         f"names joined by '+' (default {'+'.join(FUSION_LAYERS)}); "
                         f"received {layer!r}")
    return parts  # type: ignore[return-value]


def _fused(model, rois, method, layer, target):
    """``layercam-fused`` or ``gradcam-refined`` (module docstring), from one pass."""
    fine, coarse = _fusion_layers(layer)
    coarse_method = "layercam" if method == "layercam-fused" else "gradcam"
    logits, [(m_fine, _, native, _), (m_coarse, _, _, act)] = _cam_maps(
        model, rois, [("layercam", fine), (coarse_method, coarse)], target)
    if method == "layercam-fused":
        scaled = []
        for cam in (m_fine, m_coarse):   # per ROI: tanh(gamma * M / max M), 0 for an empty map
            peak = cam.flatten(1).amax(dim=1).view(-1, *([1] * (cam.ndim - 1)))
            scaled.append(torch.where(peak > 0, torch.tanh(FUSION_GAMMA * cam
                                                           / torch.where(peak > 0, peak, 1.0)),
                                      torch.zeros_like(cam)))
        fused = torch.maximum(*scaled)
    else:
        fused = torch.sqrt(m_fine * m_coarse)
    return logits, fused, f"{fine}+{coarse}", native, act


def method_layer(model: torch.nn.Module, method: str, layer: str | None = None) -> str:
    """The layer name *method* records in :class:`AttributionInfo` for *layer*, checked.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (its ``cam_layer`` is the default).
    method : str
        One of :data:`METHODS`.
    layer : str, optional
        As for :func:`predict_and_explain`.

    Returns
    -------
    str
        The CAM layer (``"layer3"``), ``"fine+coarse"`` for the fused methods, ``"input"`` for
        Integrated Gradients and Occlusion (whose *layer*, which only chooses the activations
        returned, is still checked).

    Raises
    ------
    ValueError
        Unknown method, or a layer the model does not have (the message lists its modules).
    """
    _check_method(model, method)
    if method in FUSED_METHODS:
        names = _fusion_layers(layer)
        for name in names:
            resolve_layer(model, name)
        return "+".join(names)
    name = resolve_layer(model, layer)[0]
    return name if method in CAM_METHODS else "input"


def _check_method(model: torch.nn.Module, method: str) -> None:
    """*method* is one of :data:`METHODS` and applies to *model*.

    A model whose ``cam_refusal`` is set (a TorchScript archive, a network without a 3-D grid
    layer: :class:`discovery.model.probe.ExternalClassifier`) refuses the CAM methods.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; available: {', '.join(METHODS)}")
    refusal = getattr(model, "cam_refusal", None)
    if refusal and method in CAM_METHODS + FUSED_METHODS:
        raise ValueError(f"{method} does not apply to this model: {refusal}")


def _check_target(target: int, logits: torch.Tensor) -> None:
    if not 0 <= target < logits.shape[1]:
        raise ValueError(f"target {target} is out of range for {logits.shape[1]} classes")


def _captum(model, rois, method, target, features: tuple[str, torch.nn.Module] | None):
    from captum.attr import IntegratedGradients, Occlusion

    x = rois.detach().to(dtype=torch.float32)
    with contextlib.ExitStack() as stack:
        captured = (stack.enter_context(_capture(features[1], features[0]))
                    if features is not None else {})
        with torch.no_grad():
            logits = model(x)
    _check_target(target, logits)
    if method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(
            x, baselines=BASELINE, target=target, n_steps=IG_STEPS, method="gausslegendre",
            internal_batch_size=max(1, min(len(x) * IG_STEPS, 64)))
        voxels = attr.detach().sum(dim=1)  # a voxel's share: the sum over its input channels
    else:
        # the cube covers every input channel at once: a voxel is occluded, not one window
        w, s, c = OCCLUSION_WINDOW, OCCLUSION_STRIDE, int(x.shape[1])
        attr = Occlusion(model).attribute(
            x, sliding_window_shapes=(c, w, w, w), strides=(1, s, s, s), baselines=BASELINE,
            target=target, perturbations_per_eval=16)
        voxels = attr.detach()[:, 0]  # the same value in every channel
    return logits, voxels, "input", tuple(int(s) for s in x.shape[2:]), captured.get("act")


def predict_and_explain(
    model: torch.nn.Module,
    rois,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    target: int = 1,
    return_activations: bool = False,
) -> tuple[np.ndarray, np.ndarray, AttributionInfo] | tuple[np.ndarray, np.ndarray,
                                                            AttributionInfo, np.ndarray]:
    """Class probabilities and attribution maps (and the layer's activations) in one pass.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits ``(N, C)``. Used as it is (put it in ``eval()`` first).
    rois : Tensor, shape (N, C, z, y, x)
        Preprocessed ROIs (:func:`discovery.model.rois.network_input`: one channel per HU
        window of the model card).  Integrated Gradients sums a voxel's attribution over its
        channels; Occlusion occludes all channels of a voxel together.
    method : str
        One of :data:`METHODS` (see the module docstring).
    layer : str, optional
        Dotted module name for the CAM methods; default ``model.cam_layer``.  The fused
        methods take ``"fine+coarse"`` (default :data:`FUSION_LAYERS`).  Integrated Gradients
        and Occlusion record ``"input"``; for them *layer* only chooses the activations.
    target : int
        Class whose logit is explained.
    return_activations : bool
        Also return the feature maps of the CAM layer (*layer*, else ``model.cam_layer``; the
        coarse layer for the fused methods) from the same forward pass, as
        :func:`layer_activations` would compute them.

    Returns
    -------
    probabilities : ndarray, shape (N, C), float32
        Softmax of the logits of the unperturbed ROIs.
    maps : ndarray, shape (N, z, y, x), float32
        Attribution on the ROI grid, raw except ``layercam-fused`` (normalised per ROI, module
        docstring): CAM methods ``>= 0`` (e.g. Grad-CAM:
        ``ReLU(sum_c w_c A_c)`` with ``w_c`` the spatial mean of the gradient of the target
        logit with respect to channel ``c`` of the layer's output ``A``) upsampled trilinearly
        (``align_corners=False``); IG and Occlusion signed, in logit units.
    info : AttributionInfo
    activations : ndarray, shape (N, C, d, h, w), float32
        Only with ``return_activations=True``.
    """
    _check_method(model, method)
    rois = _check_rois(rois, model)
    signed = method not in CAM_METHODS + FUSED_METHODS
    if method in CAM_METHODS:
        logits, maps, layer_name, native, act = _cam(model, rois, method, layer, target)
    elif method in FUSED_METHODS:
        logits, maps, layer_name, native, act = _fused(model, rois, method, layer, target)
    else:
        features = resolve_layer(model, layer) if return_activations else None
        logits, maps, layer_name, native, act = _captum(model, rois, method, target, features)
    probs = torch.softmax(logits, dim=1)
    info = AttributionInfo(
        method=method, layer=layer_name, target=int(target), native_shape=native,  # type: ignore[arg-type]
        roi_shape=tuple(int(s) for s in rois.shape[2:]),  # type: ignore[arg-type]
        upsampling="none" if signed else "trilinear",
        signed=signed,
    )
    out = (probs.numpy().astype(np.float32), maps.numpy().astype(np.float32), info)
    if return_activations:
        return (*out, act.numpy().astype(np.float32, copy=False))
    return out


def explain(model: torch.nn.Module, rois, *, method: str = "gradcam", layer: str | None = None,
            target: int = 1) -> np.ndarray:
    """Attribution maps ``(N, z, y, x)`` float32 for *rois* ``(N, C, z, y, x)``.

    See :func:`predict_and_explain` for the definitions; this returns the maps only.
    """
    return predict_and_explain(model, rois, method=method, layer=layer, target=target)[1]
