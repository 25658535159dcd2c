"""Stage 1, the classifier: ROIs cut from the scan, the network and its card, training.

``rois``: nodule sites and the model's input ROIs; ``card``: the model card, building, saving
and loading the network; ``train``: ``discovery train``.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rois": ["NoduleSite", "Roi", "nodule_sites", "nodule_label", "extract_roi", "normalize_hu",
             "roi_input", "roi_to_scan"],
    "card": ["ModelCard", "NoduleResNet", "build_network", "load_model", "save_model",
             "default_model_dir"],
    "train": ["TrainSettings", "train_model", "collect_rois"],
})
