"""Stage 1, the classifier: ROIs cut from the scan, the network and its card, training.

``rois``: nodule sites and the model's input ROIs; ``card``: the model card, building, saving
and loading the network; ``network``: the network (MONAI's ResNet); ``compiled``: its
compiled copy, which scoring loads without importing MONAI; ``external`` and ``probe``: models people bring (MONAI bundles,
TorchScript, ``module:factory``) and the wrapper that adapts their outputs; ``train``: ``discovery train``; ``labels``: where its labels come from (truth.csv, a labels
CSV, LIDC readers' malignancy ratings); ``edit``: replace voxels with lung
parenchyma and re-score; ``reliance``: does the prediction rest on the nodule.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rois": ["NoduleSite", "Roi", "nodule_sites", "nodule_label", "extract_roi", "normalize_hu",
             "roi_input", "roi_to_scan"],
    "card": ["ModelCard", "build_network", "load_model", "save_model", "default_model_dir"],
    "network": ["NoduleResNet"],
    "compiled": ["CompiledResNet", "load_compiled", "write_compiled"],
    "external": ["load_any_model", "load_bundle", "load_torchscript", "load_factory",
                 "read_sidecar", "Sidecar"],
    "probe": ["ExternalClassifier", "probe_network"],
    "train": ["TrainSettings", "train_model", "collect_rois"],
    "labels": ["LidcRatingRule", "LabelSource", "parse_label_source"],
    "edit": ["inpaint_parenchyma", "score_inputs", "bounding_box"],
    "reliance": ["RelianceSettings", "Reliance", "nodule_reliance", "control_blobs",
                 "reliance_from_probabilities", "reliance_text"],
})
