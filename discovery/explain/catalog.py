"""The attribution methods by name, without importing torch (the command line's choices).

:mod:`discovery.explain.methods` computes them and re-exports these names.
"""

__all__ = ["CAM_METHODS", "FUSED_METHODS", "METHODS", "IG_STEPS", "TITLES", "map_label",
           "map_title"]

#: Class activation maps of one layer.
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
#: CAMs of two layers combined (:mod:`discovery.explain.methods`); ``layer`` is ``"fine+coarse"``.
FUSED_METHODS = ("layercam-fused", "gradcam-refined")
#: Every method :func:`discovery.explain.methods.predict_and_explain` computes.
METHODS = CAM_METHODS + FUSED_METHODS + ("integrated_gradients", "occlusion")
#: Integrated Gradients: Riemann steps (each one forward + backward per ROI).
IG_STEPS = 32
#: Each method's name as the literature writes it (reports, captions).
TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
          "layercam": "LayerCAM", "layercam-fused": "fused LayerCAM",
          "gradcam-refined": "refined Grad-CAM", "integrated_gradients": "Integrated Gradients",
          "occlusion": "Occlusion"}


def _shown_layer(layer) -> str | None:
    """The layer worth naming: None when not recorded or the input (Integrated Gradients,
    Occlusion: no CAM layer)."""
    return layer if isinstance(layer, str) and layer and layer != "input" else None


def map_label(method: str, layer: str | None = None) -> str:
    """``"method@layer"``, the maps a check was run on (the sanity tables); *method* alone
    when the layer was not recorded (stores written before the sanity rows kept it) or is
    the input."""
    shown = _shown_layer(layer)
    return f"{method}@{shown}" if shown else str(method)


def map_title(method: str | None, layer: str | None = None) -> str:
    """The map a results folder was scored with, in words: ``"LayerCAM at layer2"``;
    ``"attribution"`` when the method is not recorded."""
    if not method:
        return "attribution"
    title = TITLES.get(str(method), str(method))
    shown = _shown_layer(layer)
    return f"{title} at {shown}" if shown else title
