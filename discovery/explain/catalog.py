"""The attribution methods by name, without importing torch (the command line's choices).

:mod:`discovery.explain.methods` computes them and re-exports these names.
"""

__all__ = ["CAM_METHODS", "FUSED_METHODS", "METHODS", "IG_STEPS"]

#: Class activation maps of one layer.
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
#: CAMs of two layers combined (:mod:`discovery.explain.methods`); ``layer`` is ``"fine+coarse"``.
FUSED_METHODS = ("layercam-fused", "gradcam-refined")
#: Every method :func:`discovery.explain.methods.predict_and_explain` computes.
METHODS = CAM_METHODS + FUSED_METHODS + ("integrated_gradients", "occlusion")
#: Integrated Gradients: Riemann steps (each one forward + backward per ROI).
IG_STEPS = 32
