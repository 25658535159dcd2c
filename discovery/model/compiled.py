"""A compiled copy of the tool's network, so that scoring does not import MONAI.

``import monai`` costs about 2 s and 270 MiB before any data (its package initialiser imports
all of its subpackages), more than half of what scoring one standard scan may take.  The
network itself is small and fixed once trained, so :func:`save_model
<discovery.model.card.save_model>` also writes it compiled: each of its top-level stages
(``stem``: input standardisation, first convolution, batch norm and activation; ``layer1`` ...
``layer4``; ``head``: global pooling and the classifier) traced with ``torch.jit.trace`` in
``eval()`` mode, in one TorchScript archive beside the weights:

* ``model.compiled.pt`` -- the archive;
* ``model.compiled.json`` -- what it was made from: the SHA-256 of the weights and of the
  card's architecture, the archive's own SHA-256, the torch version, and the largest difference
  to the MONAI network measured when it was written (logits and every stage's output on seeded
  random ROIs; it is written only when that difference is at most :data:`TOLERANCE`).

:func:`load_compiled` returns the stages behind ordinary (eager) modules named like the
network's own (``layer1`` ... ``layer4``), so forward hooks -- Grad-CAM, LayerCAM, HiResCAM,
the fused maps, the regions' deep features -- reach them as they reach the MONAI network,
and gradients flow through them.  It is for inference only (batch norm stays in ``eval()``
mode, the weights cannot be edited): training, the randomisation sanity checks and any layer
deeper than a stage use the MONAI network.  A copy that does not match its folder's weights
or card is ignored (logged) and the MONAI network is built as before.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
import torch

from data_tools.errors import ModelError, file_label
from data_tools.files import atomic_path, sha256_file

# ``ModelCard`` in the annotations is discovery.model.card's, not imported: that module
# imports this one.

__all__ = ["COMPILED_NAME", "COMPILED_META", "STAGES", "CompiledResNet", "compile_network",
           "compiled_mismatch", "load_compiled", "write_compiled"]

log = logging.getLogger(__name__)

COMPILED_NAME = "model.compiled.pt"
COMPILED_META = "model.compiled.json"
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
TOLERANCE = 1e-5
FORMAT = 1


class _Stem(torch.nn.Module):
    """Input standardisation, first convolution, batch norm, activation (and max-pool)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if net.input_mean is not None:
            x = (x - net.input_mean) / net.input_std
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return x


class _Head(torch.nn.Module):
    """Global pooling and the classifier."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.avgpool(x)
        return self.net.fc(x.view(x.size(0), -1))


class _Chain(torch.nn.Module):
    """The traced stages in order (the archive's top-level module)."""

    def __init__(self, stages: dict[str, torch.nn.Module]):
        super().__init__()
        self.stem, self.layer1, self.layer2 = stages["stem"], stages["layer1"], stages["layer2"]
        self.layer3, self.layer4, self.head = stages["layer3"], stages["layer4"], stages["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(self.layer4(self.layer3(x)))


class _Stage(torch.nn.Module):
    """An eager module around one scripted stage: hooks cannot be registered on a
    ScriptModule, but on this wrapper they can, and they see the stage's output."""

    def __init__(self, scripted: torch.nn.Module):
        super().__init__()
        self.scripted = scripted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)


class CompiledResNet(torch.nn.Module):
    """The compiled network: the stages of :data:`STAGES` as top-level modules.

    Attributes
    ----------
    cam_layer : str
        The card's Grad-CAM layer, as on :class:`~discovery.model.network.NoduleResNet`.
    input_channels : int
        Channels the first convolution takes (read by the attribution methods' input check).
    """

    def __init__(self, chain: torch.nn.Module, *, cam_layer: str, input_channels: int):
        super().__init__()
        for name in STAGES:
            setattr(self, name, _Stage(getattr(chain, name)))
        self.cam_layer = cam_layer
        self.input_channels = int(input_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in STAGES:
            x = getattr(self, name)(x)
        return x


@contextmanager
def _quiet_deprecation():
    """TorchScript's own deprecation warnings (module docstring), not passed on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _stage_modules(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {"stem": _Stem(net), "layer1": net.layer1, "layer2": net.layer2,
            "layer3": net.layer3, "layer4": net.layer4, "head": _Head(net)}


def _stage_outputs(stages: dict[str, torch.nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for name in STAGES:
        x = stages[name](x)
        out.append(x)
    return out


def compile_network(net: torch.nn.Module, card: ModelCard, *, seed: int = 0
                    ) -> tuple[torch.jit.ScriptModule, float]:
    """Trace *net* stage by stage and check the result against it.

    Parameters
    ----------
    net : NoduleResNet
        The trained network; not changed (a copy is put in ``eval()`` mode and traced).
    card : ModelCard
        Its card (ROI size and input channels of the check).
    seed : int
        Seed of the random ROIs the trace and the check use.

    Returns
    -------
    archive : torch.jit.ScriptModule
        The stages of :data:`STAGES` in one scripted module.
    max_abs_difference : float
        Largest absolute difference to *net* over the logits and every stage's output.

    Raises
    ------
    ModelError
        The traced stages differ from the network by more than :data:`TOLERANCE` (for
        example a MONAI version whose ResNet runs its stages in another order).
    """
    net = copy.deepcopy(net).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((2, card.in_channels, *card.roi_size_vox), generator=gen)
    stages = _stage_modules(net)
    traced, h = {}, x
    with torch.no_grad(), _quiet_deprecation():
        for name in STAGES:
            traced[name] = torch.jit.trace(stages[name], h)
            h = stages[name](h)
        archive = torch.jit.script(_Chain(traced))
        check = torch.rand((3, card.in_channels, *card.roi_size_vox), generator=gen)
        ours = _stage_outputs({n: getattr(archive, n) for n in STAGES}, check)
        theirs = _stage_outputs(stages, check)
        diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
        diff = max(diff, float((ours[-1] - net(check)).abs().max()))
    if not diff <= TOLERANCE:
        raise ModelError(f"the compiled network differs from the MONAI network by {diff:.3g} "
                         f"(at most {TOLERANCE:g} allowed); it was not written")
    return archive, diff


def write_compiled(net: torch.nn.Module, card: ModelCard, out_dir: str | Path) -> dict:
    """Write the compiled copy of *net* and its record into the model folder *out_dir*.

    *card* must be the card saved with the weights (its ``weights_sha256`` set).  Returns the
    record written to :data:`COMPILED_META` (``max_abs_difference`` among its keys).  Raises
    :class:`ModelError` as :func:`compile_network` does.
    """
    out = Path(out_dir)
    archive, diff = compile_network(net, card)
    with atomic_path(out / COMPILED_NAME) as tmp:
        archive.save(str(tmp))
    meta = {"format": FORMAT, "weights_sha256": card.weights_sha256,
            "architecture_sha256": _digest(card.architecture),
            "compiled_sha256": sha256_file(out / COMPILED_NAME), "torch": torch.__version__,
            "max_abs_difference": diff, "stages": list(STAGES)}
    with atomic_path(out / COMPILED_META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def compiled_mismatch(model_dir: str | Path, card: ModelCard) -> str | None:
    """Why the folder's compiled copy cannot stand for its card and weights (``"there is
    none"``, ``"it was compiled from other weights"``, ...), or None when it can."""
    model_dir = Path(model_dir)
    archive, meta_path = model_dir / COMPILED_NAME, model_dir / COMPILED_META
    if not archive.is_file() or not meta_path.is_file():
        return "there is none"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        return f"{COMPILED_META} is not valid JSON ({exc})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"{COMPILED_META} is not of format {FORMAT}"
    if meta.get("weights_sha256") != card.weights_sha256:
        return "it was compiled from other weights"
    if meta.get("architecture_sha256") != _digest(card.architecture):
        return "it was compiled for another architecture in the card"
    if card.gradcam_layer not in STAGES:
        return f"the card's Grad-CAM layer {card.gradcam_layer!r} is not one of its stages"
    if meta.get("compiled_sha256") != sha256_file(archive):
        return f"{COMPILED_NAME} was changed after it was written"
    return None


def load_compiled(model_dir: str | Path, card: ModelCard) -> CompiledResNet | None:
    """The folder's compiled network in ``eval()`` mode, or None (reason logged) when it has
    none, or one that does not match *card* (its weights, architecture) or cannot be read.

    The caller has checked the weights file against the card (:func:`load_model
    <discovery.model.card.load_model>` does).
    """
    model_dir = Path(model_dir)
    reason = compiled_mismatch(model_dir, card)
    if reason is None:
        try:
            with _quiet_deprecation():
                chain = torch.jit.load(str(model_dir / COMPILED_NAME), map_location="cpu")
            model = CompiledResNet(chain, cam_layer=card.gradcam_layer,
                                   input_channels=card.in_channels)
            return model.eval()
        except (RuntimeError, AttributeError, ValueError) as exc:
            reason = f"it could not be read with torch {torch.__version__} ({exc})"
    if reason != "there is none":
        log.info("compiled copy in model folder %s not used: %s; using the MONAI network",
                 file_label(model_dir), reason)
    return None
