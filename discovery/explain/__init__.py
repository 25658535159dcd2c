"""Stage 2, explanations: attribution methods on one contract, and their faithfulness.

``methods``: Grad-CAM family (and two fusions of a fine and a coarse layer), Integrated
Gradients, occlusion (raw magnitudes, the method, layer and target recorded); ``faithfulness``: deletion / insertion curves and the cascading
parameter-randomisation test.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "methods": ["METHODS", "CAM_METHODS", "FUSED_METHODS", "AttributionInfo", "explain",
                "predict_and_explain", "layer_activations", "resolve_layer", "method_layer"],
    "faithfulness": ["PerturbationResult", "perturbation_curves", "RandomizationResult",
                     "randomization_test"],
})
