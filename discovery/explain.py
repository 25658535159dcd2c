"""Attribution maps for the nodule classifier.

Contract for every method: a float32 array ``(N, z, y, x)`` on the ROI grid holding *raw*
magnitudes (for Grad-CAM: after the ReLU, never min-max rescaled), plus the provenance that
:class:`AttributionInfo` records (method, layer, target class, native resolution).

Hooks are scoped to one call and to the calling thread: a forward hook is registered for the
duration of the forward pass only, and it records activations only when the hooked module runs
on the thread that registered it.  Two threads can therefore explain with one shared model at
the same time; the caller's model is never modified (no ``inplace`` flags switched, no mode
changed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AttributionInfo", "explain", "predict_and_explain", "resolve_layer", "METHODS"]

METHODS = ("gradcam",)


@dataclass(frozen=True)
class AttributionInfo:
    """Provenance recorded with every attribution map."""

    method: str
    layer: str
    target: int
    native_shape: tuple[int, int, int]
    roi_shape: tuple[int, int, int]
    upsampling: str = "trilinear"


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


def _check_rois(rois) -> torch.Tensor:
    if not isinstance(rois, torch.Tensor):
        rois = torch.as_tensor(np.asarray(rois))
    if rois.ndim != 5 or rois.shape[1] != 1:
        raise ValueError(
            f"rois must be a float tensor (N, 1, z, y, x); received shape {tuple(rois.shape)}"
        )
    if not torch.is_floating_point(rois):
        raise ValueError(f"rois must be floating point; received dtype {rois.dtype}")
    return rois


def predict_and_explain(
    model: torch.nn.Module,
    rois,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    target: int = 1,
) -> tuple[np.ndarray, np.ndarray, AttributionInfo]:
    """Class probabilities and attribution maps from one forward and one backward pass.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits ``(N, C)``. Used as it is (put it in ``eval()`` first).
    rois : Tensor, shape (N, 1, z, y, x)
        Preprocessed ROIs (HU window applied).
    method : {"gradcam"}
    layer : str, optional
        Dotted module name; default ``model.cam_layer``.
    target : int
        Class whose score is explained.

    Returns
    -------
    probabilities : ndarray, shape (N, C), float32
        Softmax of the logits.
    maps : ndarray, shape (N, z, y, x), float32
        Grad-CAM: ``ReLU(sum_c w_c A_c)`` with ``w_c`` the spatial mean of the gradient of the
        target logit with respect to channel ``c`` of the layer's output ``A``, upsampled
        trilinearly (``align_corners=False``) to the ROI size. Raw magnitudes, >= 0.
    info : AttributionInfo
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; available: {', '.join(METHODS)}")
    rois = _check_rois(rois)
    layer_name, module = resolve_layer(model, layer)
    owner = threading.get_ident()
    captured: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        if threading.get_ident() != owner:
            return None
        # Hand a fresh tensor downstream so later in-place ops cannot alter what we keep.
        out = out.clone()
        captured["act"] = out
        return out

    x = rois.detach().to(dtype=torch.float32).requires_grad_(True)
    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        handle.remove()
    if "act" not in captured:
        raise RuntimeError(f"layer {layer_name!r} did not run during the forward pass")
    if not 0 <= target < logits.shape[1]:
        raise ValueError(f"target {target} is out of range for {logits.shape[1]} classes")
    act = captured["act"]
    (grads,) = torch.autograd.grad(logits[:, target].sum(), act)
    with torch.no_grad():
        weights = grads.mean(dim=tuple(range(2, grads.ndim)), keepdim=True)
        cam = torch.relu((weights * act).sum(dim=1, keepdim=True))
        native = tuple(int(s) for s in cam.shape[2:])
        cam = F.interpolate(cam, size=tuple(rois.shape[2:]), mode="trilinear", align_corners=False)
        probs = torch.softmax(logits.detach(), dim=1)
    info = AttributionInfo(
        method=method, layer=layer_name, target=int(target), native_shape=native,  # type: ignore[arg-type]
        roi_shape=tuple(int(s) for s in rois.shape[2:]),  # type: ignore[arg-type]
    )
    return probs.numpy().astype(np.float32), cam[:, 0].numpy().astype(np.float32), info


def explain(model: torch.nn.Module, rois, *, method: str = "gradcam", layer: str | None = None,
            target: int = 1) -> np.ndarray:
    """Attribution maps ``(N, z, y, x)`` float32 for *rois* ``(N, 1, z, y, x)``.

    See :func:`predict_and_explain` for the definition; this returns the maps only.
    """
    return predict_and_explain(model, rois, method=method, layer=layer, target=target)[1]
