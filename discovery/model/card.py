"""The nodule classifier: a MONAI 3-D ResNet, its model card, and hash-checked weights.

A model folder holds

* ``model.safetensors`` -- the weights (no code, safe to load from anyone);
* ``model.compiled.pt`` and ``model.compiled.json`` -- the network compiled, which scoring
  loads without importing MONAI (:mod:`discovery.model.compiled`; optional);
* ``model.json`` -- the model card: architecture, ROI size (voxels) and spacing (mm), the HU
  window of each input channel, classes, the layer used for Grad-CAM, how it was trained, its
  held-out metrics, and the SHA-256 of the weights file, which :func:`load_model` checks
  before loading.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from data_tools.errors import ModelError, file_label
from data_tools.files import atomic_path, sha256_file
from discovery.schema import decision_threshold, parse_map

if TYPE_CHECKING:
    from discovery.model.compiled import CompiledResNet
    from discovery.model.network import NoduleResNet

log = logging.getLogger(__name__)

__all__ = [
    "ModelCard",
    "TRAINED_DEFAULT_MAP",
    "build_network",
    "default_architecture",
    "default_model_dir",
    "load_model",
    "save_model",
    "save_card",
    "load_card",
    "sha256_file",
]

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
#: The :attr:`ModelCard.default_map` of the models this project trains (``discovery train``,
#: the benchmark), as of the demo model: LayerCAM at ``layer2``, 16³ cells of 3 mm.
TRAINED_DEFAULT_MAP = "layercam@layer2"
CARD_VERSION = 1


def default_architecture() -> dict[str, Any]:
    """MONAI ResNet-10-style network sized for 32^3 ROIs on a CPU.

    The first convolution keeps full resolution (3^3 kernel, stride 1, no max-pool), so
    ``layer3`` -- the Grad-CAM layer -- sees an 8^3 grid (6 mm cells for a 48 mm ROI).
    Three stages: global pooling follows ``layer3`` directly (see :class:`NoduleResNet`).
    """
    return {
        "name": "monai.networks.nets.ResNet",
        "stages": 3,
        "kwargs": {
            "block": "basic",
            "layers": [1, 1, 1, 1],
            "block_inplanes": [8, 16, 32, 64],
            "spatial_dims": 3,
            "n_input_channels": 1,
            "conv1_t_size": 3,
            "conv1_t_stride": 1,
            "no_max_pool": True,
            "num_classes": 2,
        },
    }


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to use a trained model correctly, stored as ``model.json``.

    Attributes
    ----------
    roi_size_vox : tuple of 3 int
        ROI shape ``(z, y, x)`` in voxels fed to the network.
    roi_spacing_mm : tuple of 3 float
        Isotropic resampling spacing ``(dz, dy, dx)`` of the ROI in mm.
    hu_window : tuple of 2 float
        HU values mapped to 0 and 1 before the network (values clipped), when
        ``input_windows`` is empty: the single input channel of cards written before there
        were several windows (the demo model's).  With ``input_windows`` it is their union
        (lowest low, highest high), for the record only.
    input_windows : tuple of (float, float)
        One input channel per HU window ``(low, high)``, each mapped to [0, 1] and clipped
        (:func:`discovery.model.rois.network_input`); empty: the one ``hu_window``.  The
        architecture's ``n_input_channels`` must match (:meth:`with_windows` sets both).
    classes : tuple of str
        Class names by output index; index 1 is the positive (malignant) class.
    gradcam_layer : str
        Dotted module name used by Grad-CAM by default.
    training_domain : dict
        What the training data covered (:class:`discovery.model.domain.TrainingDomain` as a
        dict: spacing and nodule-size ranges, intensity statistics of the training ROIs);
        empty when unknown.  Each scored nodule is checked against it (applicability flags).
    verdict_rule : dict
        The verdict rule fitted for this model on calibration cohorts
        (:class:`discovery.align.rule.VerdictRule` as a dict: the map it reads, its features
        and weights, where it was fitted); empty: the threshold verdict.
    default_map : str
        The map ``discovery score`` explains this model with when none is asked for:
        ``"METHOD"`` or ``"METHOD@LAYER"`` (the demo model's: ``"layercam@layer2"``, 16³
        cells of 3 mm, docs/method/resolution.md); empty: Grad-CAM at ``gradcam_layer``.
    """

    architecture: dict[str, Any] = field(default_factory=default_architecture)
    roi_size_vox: tuple[int, int, int] = (32, 32, 32)
    roi_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-1000.0, 3000.0)
    classes: tuple[str, ...] = ("benign", "malignant")
    gradcam_layer: str = "layer3"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    card_version: int = CARD_VERSION
    input_windows: tuple[tuple[float, float], ...] = ()
    training_domain: dict[str, Any] = field(default_factory=dict)
    verdict_rule: dict[str, Any] = field(default_factory=dict)
    default_map: str = ""

    def __post_init__(self):
        if self.default_map != "":
            try:
                parse_map(self.default_map)
            except ValueError:
                raise ValueError(f"default_map must be 'METHOD' or 'METHOD@LAYER' (or empty); "
                                 f"received {self.default_map!r}") from None
        windows = tuple(tuple(float(v) for v in w) for w in self.input_windows)
        for w in (*windows, tuple(float(v) for v in self.hu_window)):
            if len(w) != 2 or not (math.isfinite(w[0]) and math.isfinite(w[1]) and w[1] > w[0]):
                raise ValueError(f"HU windows must be finite (low, high) pairs with high > low; "
                                 f"received {w!r}")
        object.__setattr__(self, "input_windows", windows)
        if self.training_domain:
            from discovery.model.domain import TrainingDomain

            TrainingDomain.from_dict(self.training_domain)      # ValueError naming the field

    @property
    def domain(self):
        """The :class:`~discovery.model.domain.TrainingDomain`, or None when unknown."""
        from discovery.model.domain import TrainingDomain

        return TrainingDomain.from_dict(self.training_domain) if self.training_domain else None

    @property
    def field_of_view_mm(self) -> tuple[float, float, float]:
        """The ROI's edge lengths ``(z, y, x)`` in mm: what the network sees of a nodule."""
        return tuple(float(n) * float(s) for n, s in zip(self.roi_size_vox, self.roi_spacing_mm))

    @property
    def windows(self) -> tuple[tuple[float, float], ...]:
        """The HU window of each input channel: ``input_windows``, else ``(hu_window,)``."""
        return self.input_windows or (tuple(self.hu_window),)

    @property
    def in_channels(self) -> int:
        """Number of input channels (one per window)."""
        return len(self.windows)

    def with_windows(self, windows) -> "ModelCard":
        """A copy of the card whose input has one channel per HU window of *windows*.

        One window gives a card of the older form (``hu_window`` set, ``input_windows``
        empty), so ``with_windows([(-1000, 3000)])`` is the demo model's input exactly;
        several set ``input_windows`` and ``hu_window`` to their union.  The architecture's
        ``n_input_channels`` follows.
        """
        windows = tuple(tuple(float(v) for v in w) for w in windows)
        if not windows:
            raise ValueError("with_windows needs at least one (low, high) HU window; received none")
        arch = copy.deepcopy(self.architecture)
        arch.setdefault("kwargs", {})["n_input_channels"] = len(windows)
        if len(windows) == 1:
            return dataclasses.replace(self, architecture=arch, hu_window=windows[0],
                                       input_windows=())
        union = (min(w[0] for w in windows), max(w[1] for w in windows))
        return dataclasses.replace(self, architecture=arch, hu_window=union,
                                   input_windows=windows)

    @property
    def verdict_rule_sha256(self) -> str:
        """SHA-256 (hex) of the verdict rule's canonical JSON; "" when the card has none."""
        if not self.verdict_rule:
            return ""
        text = json.dumps(self.verdict_rule, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def threshold(self) -> float:
        """Decision threshold on P(malignant) (``metrics["threshold"]``, else 0.5)."""
        return decision_threshold(self.metrics)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("roi_size_vox", "roi_spacing_mm", "hu_window", "classes"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "input_windows" in kwargs:
            kwargs["input_windows"] = tuple(tuple(w) for w in kwargs["input_windows"])
        return cls(**kwargs)


def build_network(card: ModelCard) -> NoduleResNet:
    """Instantiate the (untrained) network the card describes."""
    arch = card.architecture
    if arch.get("name") != "monai.networks.nets.ResNet":
        raise ModelError(
            f"model card names architecture {arch.get('name')!r}; this version builds only "
            "'monai.networks.nets.ResNet'"
        )
    channels = int(arch["kwargs"].get("n_input_channels", 3))
    if channels != card.in_channels:
        raise ModelError(
            f"model card's architecture takes {channels} input channel(s) but names "
            f"{card.in_channels} HU window(s) {list(card.windows)}; set both with "
            "ModelCard.with_windows")
    from discovery.model.network import NoduleResNet

    return NoduleResNet(cam_layer=card.gradcam_layer, stages=int(arch.get("stages", 4)),
                        input_mean=arch.get("input_mean"), input_std=arch.get("input_std"),
                        context=int(arch.get("context", 0)),
                        pointwise=int(arch.get("pointwise", 0)), **arch["kwargs"])


def default_model_dir() -> Path:
    """The committed demo model, or ``$DISCOVERY_MODEL_DIR`` when set."""
    env = os.environ.get("DISCOVERY_MODEL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "sample_data" / "demo_model"


def save_model(model: torch.nn.Module, card: ModelCard, out_dir: str | Path) -> ModelCard:
    """Write weights and card (with the weights' SHA-256) to *out_dir*; return the card.

    A :class:`~discovery.model.network.NoduleResNet` is also written compiled
    (:mod:`discovery.model.compiled`), which scoring loads without importing MONAI; when it
    cannot be compiled exactly, the folder has no compiled copy (logged) and scoring builds
    the MONAI network.
    """
    from safetensors.torch import save_file

    from discovery.model.compiled import COMPILED_META, COMPILED_NAME

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (COMPILED_NAME, COMPILED_META):   # never left beside other weights
        (out / name).unlink(missing_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    card = dataclasses.replace(card, weights_sha256=sha256_file(out / WEIGHTS_NAME))
    with atomic_path(out / CARD_NAME) as tmp:
        tmp.write_text(card.to_json() + "\n")
    _write_compiled_copy(model, card, out)
    return card


def _write_compiled_copy(model: torch.nn.Module, card: ModelCard, out: Path) -> None:
    from discovery.model.compiled import write_compiled
    from discovery.model.network import NoduleResNet

    if not isinstance(model, NoduleResNet):
        return
    try:
        write_compiled(model, card, out)
    except (ModelError, RuntimeError, AttributeError) as exc:   # a torch without TorchScript
        log.warning("model folder %s: no compiled copy (%s); scoring will build the MONAI "
                    "network", file_label(out), exc)


def save_card(card: ModelCard, model_dir: str | Path) -> None:
    """Write *card* as the model folder's ``model.json`` (atomically), in place of the card
    it has for the same weights: e.g. with a verdict rule fitted for it (``discovery model
    calibrate``).

    Raises
    ------
    ModelError
        The folder has no card, or its card is for other weights than *card*'s.
    """
    current = load_card(model_dir)
    if current.weights_sha256 != card.weights_sha256:
        raise ModelError(f"model folder {file_label(model_dir)} holds other weights than the "
                         "card to write (weights SHA-256 differ); a card is written only over "
                         "the card of its own weights", path=model_dir)
    with atomic_path(Path(model_dir) / CARD_NAME) as tmp:
        tmp.write_text(card.to_json() + "\n")


def load_card(model_dir: str | Path) -> ModelCard:
    card_path = Path(model_dir) / CARD_NAME
    if not card_path.is_file():
        raise ModelError(
            f"model folder {file_label(model_dir)} has no {CARD_NAME}; a model folder holds "
            f"{WEIGHTS_NAME} and {CARD_NAME} (train one with `discovery train`)",
            path=model_dir,
        )
    try:
        return ModelCard.from_dict(json.loads(card_path.read_text()))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise ModelError(f"model card {file_label(card_path)} is not valid: {exc}", path=card_path) from None


def load_model(model_dir: str | Path | None = None, *, compiled: bool = False
               ) -> tuple[NoduleResNet | CompiledResNet, ModelCard]:
    """Load a model folder: check the weights' SHA-256 against the card, return (module, card).

    The module is returned in ``eval()`` mode on the CPU.

    Parameters
    ----------
    model_dir : path, optional
        The model folder; default :func:`default_model_dir`.
    compiled : bool
        Return the folder's compiled copy (:mod:`discovery.model.compiled`: for inference
        and attributions at its stages, without importing MONAI) when it has one that matches
        the card and weights; otherwise, and by default, the MONAI network.

    Raises
    ------
    ModelError
        Missing files, or weights whose hash differs from the card's.
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    card = load_card(model_dir)
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"model folder {file_label(model_dir)} has no {WEIGHTS_NAME}", path=model_dir)
    digest = sha256_file(weights)
    if digest != card.weights_sha256:
        raise ModelError(
            f"weights {file_label(weights)} have SHA-256 {digest[:12]}..., but the model card "
            f"expects {card.weights_sha256[:12]}...; the file was changed or belongs to another "
            "model. Restore it or retrain.",
            path=weights,
        )
    if compiled:
        from discovery.model.compiled import load_compiled

        fast = load_compiled(model_dir, card)
        if fast is not None:
            return fast, card
    model = build_network(card)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit the card's architecture: {exc}", path=weights) from None
    model.eval()
    return model, card
