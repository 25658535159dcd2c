"""Models people bring: MONAI bundles, ``package.module:factory`` modules, TorchScript archives.

Each loader returns what :func:`discovery.model.card.load_model` returns for the tool's own
model folders: an ``nn.Module`` in ``eval()`` mode (here an
:class:`~discovery.model.probe.ExternalClassifier` containing the network unchanged) and a
:class:`~discovery.model.card.ModelCard`, so the rest of the pipeline does not change.

What a classifier from elsewhere does not state is read from a small sidecar,
``discovery.json`` (:func:`read_sidecar`)::

    {"roi_size_vox": [32, 32, 32], "roi_spacing_mm": [1.5, 1.5, 1.5],
     "hu_window": [-1000, 400], "target_class": 1,
     "gradcam_layer": "class_layers.relu"}          # optional

Optional fields: ``gradcam_layer`` (else chosen by a probe pass), ``output`` (``"logits"`` or
``"probabilities"``; else detected), ``classes`` (names by output index), ``threshold`` (on
P(malignant), default 0.5), ``training_domain``, ``verdict_rule`` (written by ``discovery
model calibrate``, :func:`write_sidecar_rule`: the rule that decides the verdicts of
predicted-malignant nodules, used only with the weights it was fitted for), and for a module
folder ``factory`` (``"pkg.mod:fn"``), ``factory_kwargs`` and ``weights`` (a file name in the
folder).

Where things are (:func:`load_any_model` dispatches on the first argument):

* a folder with ``model.json``: the tool's own model folder (:func:`~discovery.model.card.load_model`);
* a folder with ``configs/``: a MONAI bundle -- ``configs/metadata.json``,
  ``configs/inference.json`` (or ``.yaml``) whose ``network_def`` builds the network (read with
  MONAI's ``ConfigParser``: only the config expressions MONAI evaluates for ``network_def`` run),
  ``models/model.pt`` (a state dict), and ``discovery.json`` beside ``configs/``;
* a file ``*.ts`` or any TorchScript archive, with ``discovery.json`` beside it (Integrated
  Gradients and occlusion only);
* ``pkg.mod:factory`` with ``weights=`` (safetensors, or a state dict that
  ``torch.load(weights_only=True)`` reads) and ``sidecar=``; or a folder whose ``discovery.json``
  names the ``factory`` (with ``model.safetensors`` or ``model.pt`` beside it), which is the
  form ``discovery score --model`` takes.

Weights are never unpickled beyond tensors and never fetched from the network.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_tools.errors import ModelError, file_label
from data_tools.files import atomic_path
from discovery.model.card import CARD_NAME, ModelCard, load_model, sha256_file
from discovery.model.probe import (
    INPUT_LAYER,
    ExternalClassifier,
    Probe,
    count_parameters,
    probe_network,
)

__all__ = [
    "SIDECAR_NAME",
    "Sidecar",
    "describe",
    "load_any_model",
    "load_bundle",
    "load_factory",
    "load_torchscript",
    "load_weights",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar_rule",
]

log = logging.getLogger(__name__)

SIDECAR_NAME = "discovery.json"
_REQUIRED = ("roi_size_vox", "roi_spacing_mm", "hu_window", "target_class")
_OPTIONAL = ("gradcam_layer", "output", "classes", "threshold", "factory", "factory_kwargs",
             "weights", "training_domain", "verdict_rule")
_EXAMPLE = ('{"roi_size_vox": [32, 32, 32], "roi_spacing_mm": [1.5, 1.5, 1.5], '
            '"hu_window": [-1000, 400], "target_class": 1}')
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Sidecar:
    """The facts a classifier from elsewhere does not state (module docstring)."""

    roi_size_vox: tuple[int, int, int]
    roi_spacing_mm: tuple[float, float, float]
    hu_window: tuple[float, float]
    target_class: int
    gradcam_layer: str | None = None
    output: str | None = None
    classes: tuple[str, ...] = ()
    threshold: float | None = None
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    training_domain: dict[str, Any] = field(default_factory=dict)
    verdict_rule: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _bad(path, field_name: str, problem: str) -> ModelError:
    return ModelError(f"sidecar {file_label(path)}: {field_name} {problem}. A sidecar needs "
                      f"{', '.join(_REQUIRED)}, e.g. {_EXAMPLE}", path=path)


def _numbers(data, key, n, kind, path, positive=True):
    value = data[key]
    ok = isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and (kind is float or float(v).is_integer()) and (not positive or v > 0) for v in value)
    if not ok:
        what = f"{n} positive {'integers' if kind is int else 'numbers'}" if positive else \
            f"{n} numbers"
        raise _bad(path, key, f"must be a list of {what}; received {value!r}")
    return tuple(kind(v) for v in value)


def _optional_fields(data: dict, path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("gradcam_layer", "factory", "weights"):
        if data.get(key) is not None:
            if not isinstance(data[key], str) or not data[key]:
                raise _bad(path, key, f"must be a non-empty string; received {data[key]!r}")
            out[key] = data[key]
    if data.get("output") is not None:
        if data["output"] not in ("logits", "probabilities"):
            raise _bad(path, "output", f"must be \"logits\" or \"probabilities\"; received "
                                       f"{data['output']!r}")
        out["output"] = data["output"]
    if data.get("classes") is not None:
        if not (isinstance(data["classes"], list) and all(isinstance(c, str) for c in data["classes"])):
            raise _bad(path, "classes", f"must be a list of names; received {data['classes']!r}")
        out["classes"] = tuple(data["classes"])
    if data.get("threshold") is not None:
        t = data["threshold"]
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1):
            raise _bad(path, "threshold", f"must be a number between 0 and 1; received {t!r}")
        out["threshold"] = float(t)
    if data.get("factory_kwargs") is not None:
        if not isinstance(data["factory_kwargs"], dict):
            raise _bad(path, "factory_kwargs", "must be an object of keyword arguments")
        out["factory_kwargs"] = dict(data["factory_kwargs"])
    if data.get("training_domain") is not None:
        from discovery.model.domain import TrainingDomain

        try:
            TrainingDomain.from_dict(dict(data["training_domain"]))
        except (TypeError, ValueError) as exc:
            raise _bad(path, "training_domain", f"is not a training domain ({exc})") from None
        out["training_domain"] = dict(data["training_domain"])
    if data.get("verdict_rule") is not None:
        rule = data["verdict_rule"]
        if not isinstance(rule, dict):
            raise _bad(path, "verdict_rule", "must be the object `discovery model calibrate` "
                                             f"writes; received {type(rule).__name__}")
        out["verdict_rule"] = dict(data["verdict_rule"])
    return out


def read_sidecar(path: str | Path) -> Sidecar:
    """Read and check a ``discovery.json`` sidecar.

    Raises
    ------
    ModelError
        Missing file, not JSON, a required field missing, an unknown field (a typo), or a
        field of the wrong type or range; the message names the file, the field and an example.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no sidecar {file_label(path)}: a model from elsewhere needs one "
                         f"({SIDECAR_NAME} beside configs/ for a bundle, beside the file for a "
                         f"TorchScript archive, or --sidecar FILE), e.g. {_EXAMPLE}", path=path)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"sidecar {file_label(path)} is not valid JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise _bad(path, "the file", "must hold one JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _bad(path, ", ".join(missing), "is missing" if len(missing) == 1 else "are missing")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _bad(path, ", ".join(unknown), f"is not a sidecar field (known: "
                                             f"{', '.join(_REQUIRED + _OPTIONAL)})")
    size = _numbers(data, "roi_size_vox", 3, int, path)
    spacing = _numbers(data, "roi_spacing_mm", 3, float, path)
    window = _numbers(data, "hu_window", 2, float, path, positive=False)
    if not window[1] > window[0]:
        raise _bad(path, "hu_window", f"must be [low, high] with high > low; received {list(window)}")
    target = data["target_class"]
    if not (isinstance(target, int) and not isinstance(target, bool) and target >= 0):
        raise _bad(path, "target_class", f"must be the index (0, 1, ...) of the malignant class; "
                                         f"received {target!r}")
    return Sidecar(size, spacing, window, int(target), path=path,  # type: ignore[arg-type]
                   **_optional_fields(data, path))


def _state_dict_from(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [v for k, v in obj.items() if k in ("state_dict", "model", "network")
                 and isinstance(v, dict)]
        if len(inner) == 1:
            obj = inner[0]
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        raise ModelError(f"weights {file_label(path)} hold {type(obj).__name__}, not a state dict "
                         "(names to tensors); save them with torch.save(model.state_dict(), ...) "
                         "or safetensors", path=path)
    return obj


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from ``torch.load(weights_only=True)``.

    Raises
    ------
    ModelError
        No file; a pickle that needs more than tensors (refused, with the reason); a file that
        holds something other than a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no weights file {file_label(path)}", path=path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"weights {file_label(path)} are not a readable safetensors file: "
                             f"{exc}", path=path) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, ...: the file is refused
        reason = str(exc).strip().splitlines()
        reason = next((line for line in reason if "Unsupported" in line or "global" in line),
                      reason[0] if reason else type(exc).__name__)
        raise ModelError(f"weights {file_label(path)} were refused: torch.load(weights_only=True) "
                         f"reads tensors only and this pickle needs more ({reason.strip()[:300]}). "
                         "This tool never unpickles code: save a state dict "
                         "(torch.save(model.state_dict(), ...)) or a safetensors file", path=path
                         ) from None
    return _state_dict_from(obj, path)


def _fit_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], path, what: str) -> None:
    own = net.state_dict()
    problems = []
    for key, value in own.items():
        if key not in state:
            problems.append(f"{key!r} is missing from the file")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(f"{key!r} has shape {list(state[key].shape)} in the file but "
                            f"{list(value.shape)} in the network")
    problems += [f"{key!r} is in the file but not in the network" for key in state if key not in own]
    if problems:
        raise ModelError(f"weights {file_label(path)} do not fit {what}: first mismatch: "
                         f"{problems[0]} ({len(problems)} mismatching key(s) in all). Check that "
                         "the network is built with the settings the weights were trained with "
                         "(widths, channels, number of classes)", path=path)
    net.load_state_dict(state)


def _card_and_model(net, side: Sidecar, *, source: dict[str, Any], weights_sha: str,
                    what: str, classes=()) -> tuple[ExternalClassifier, ModelCard]:
    net.eval()
    label = file_label(side.path)
    probe = probe_network(net, roi_size_vox=side.roi_size_vox, target_class=side.target_class,
                          output=side.output, layer=side.gradcam_layer, what=what, sidecar=label)
    layer = INPUT_LAYER if probe.layer is None else f"net.{probe.layer}"
    model = ExternalClassifier(net, output=probe.output, target_class=side.target_class,
                               cam_layer=layer, cam_refusal=probe.refusal).eval()
    names = tuple(side.classes or classes)
    arch = {"name": "external", **source, "network": type(net).__name__,
            "output": probe.output, "output_from": probe.output_from,
            "n_outputs": probe.n_outputs, "target_class": side.target_class,
            "classes": list(names), "layer_from": probe.layer_from,
            "layer_grid": list(probe.grid), "layer_channels": probe.channels,
            "grid_layers": list(probe.grid_layers), "cam_refusal": probe.refusal,
            "parameters": count_parameters(net)}
    card = ModelCard(architecture=arch, roi_size_vox=side.roi_size_vox,
                     roi_spacing_mm=side.roi_spacing_mm, hu_window=side.hu_window,
                     gradcam_layer=layer, weights_sha256=weights_sha,
                     metrics={} if side.threshold is None else {"threshold": side.threshold},
                     training_domain=side.training_domain,
                     verdict_rule=_rule_for(side, weights_sha, label))
    return model, card


def _rule_for(side: Sidecar, weights_sha: str, label: str) -> dict[str, Any]:
    """The sidecar's verdict rule when it was fitted for these weights (or says nothing of
    them); else nothing, with a warning: a rule says how one set of weights behaves."""
    fitted_for = (side.verdict_rule.get("provenance") or {}).get("weights_sha256")
    if side.verdict_rule and fitted_for and fitted_for != weights_sha:
        log.warning("the verdict rule in sidecar %s was fitted for other weights; it is not "
                    "used (verdicts by the thresholds): fit it again with `discovery model "
                    "calibrate`", label)
        return {}
    return dict(side.verdict_rule)


def sidecar_path(model: str | Path, *, sidecar: str | Path | None = None) -> Path:
    """The ``discovery.json`` the loaders read for *model* (a bundle folder, a module folder,
    a TorchScript file; *sidecar* when given): the one place that says where it is.

    Raises
    ------
    ModelError
        *model* is none of those (a ``pkg.mod:factory`` needs *sidecar*).
    """
    if sidecar is not None:
        return Path(sidecar)
    path = Path(str(model))
    if path.is_dir():
        return path / SIDECAR_NAME       # a bundle (beside configs/) or a module folder
    if path.is_file() or path.suffix == ".ts":
        return path.parent / SIDECAR_NAME
    raise ModelError(f"model {file_label(path)} has no sidecar of its own: give --sidecar FILE",
                     path=path)


def write_sidecar_rule(path: str | Path, rule: dict[str, Any], *, weights_sha256: str) -> None:
    """Write *rule* (``VerdictRule.to_dict()``) into the sidecar at *path* as its
    ``verdict_rule``, bound to the weights with SHA-256 *weights_sha256* (recorded in its
    provenance); the sidecar's other fields are kept as they were.  Atomic.

    Raises
    ------
    ModelError
        What :func:`read_sidecar` refuses: the sidecar is checked before it is rewritten.
    """
    path = Path(path)
    read_sidecar(path)
    data = json.loads(path.read_text())
    data["verdict_rule"] = {**rule, "provenance": {**(rule.get("provenance") or {}),
                                                   "weights_sha256": weights_sha256}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _bundle_config(bundle: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise ModelError(f"bundle {file_label(bundle)} has no configs/inference.json (or .yaml); a "
                     "MONAI bundle holds configs/metadata.json, configs/inference.json whose "
                     "network_def builds the network, and models/model.pt", path=bundle)


def _bundle_classes(meta: dict) -> tuple[str, ...]:
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    channel_def = next((o.get("channel_def") for o in outputs.values()
                        if isinstance(o, dict) and o.get("channel_def")), None)
    if not isinstance(channel_def, dict):
        return ()
    try:
        return tuple(str(channel_def[k]) for k in sorted(channel_def, key=int))
    except (TypeError, ValueError):
        return ()


def _bundle_network(bundle: Path, config: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(config))
    except Exception as exc:  # yaml / json errors
        raise ModelError(f"bundle config {file_label(config)} cannot be read: {exc}",
                         path=config) from None
    if "network_def" not in parser.config:
        raise ModelError(f"bundle config {file_label(config)} has no network_def: the tool builds "
                         "the network from it. Add an entry such as \"network_def\": "
                         "{\"_target_\": \"DenseNet121\", \"spatial_dims\": 3, \"in_channels\": 1, "
                         "\"out_channels\": 2}", path=config)
    parser["bundle_root"] = str(bundle)
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # the config's own expressions and constructor
        raise ModelError(f"network_def of {file_label(config)} does not build: "
                         f"{type(exc).__name__}: {str(exc)[:400]}", path=config) from None
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"network_def of {file_label(config)} builds a {type(net).__name__}, not "
                         "a torch.nn.Module", path=config)
    return net


def load_bundle(bundle: str | Path, *, sidecar: str | Path | None = None
                ) -> tuple[ExternalClassifier, ModelCard]:
    """Load a MONAI bundle folder (module docstring) with its ``discovery.json`` sidecar."""
    bundle = Path(bundle)
    meta_path = bundle / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise ModelError(f"bundle {file_label(bundle)} has no configs/metadata.json; is it a MONAI "
                         "bundle folder (configs/, models/)?", path=bundle)
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ModelError(f"bundle metadata {file_label(meta_path)} is not valid JSON: {exc}",
                         path=meta_path) from None
    config = _bundle_config(bundle)
    side = read_sidecar(sidecar_path(bundle, sidecar=sidecar))
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        hint = (" (it has models/model.ts: give that file as the model for Integrated Gradients "
                "and occlusion)") if (bundle / "models" / "model.ts").is_file() else ""
        raise ModelError(f"bundle {file_label(bundle)} has no models/model.pt, the state dict "
                         f"network_def's weights are read from{hint}", path=bundle)
    net = _bundle_network(bundle, config)
    what = f"network_def of bundle {file_label(bundle)}"
    _fit_weights(net, load_weights(weights), weights, what)
    source = {"source": "monai-bundle", "bundle": bundle.name, "config": config.name,
              "bundle_version": str(meta.get("version", "")), "weights": "models/model.pt",
              "config_sha256": sha256_file(config)}  # a changed config re-scores (config_hash)
    return _card_and_model(net, side, source=source, weights_sha=sha256_file(weights),
                           what=what, classes=_bundle_classes(meta))


def _is_torchscript(path: Path) -> bool:
    if path.suffix == ".ts":
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torchscript(path: str | Path, *, sidecar: str | Path | None = None
                     ) -> tuple[ExternalClassifier, ModelCard]:
    """Load a TorchScript archive with ``discovery.json`` beside it (or *sidecar*).

    The CAM methods are refused for it (hooks do not reach inside a scripted module);
    Integrated Gradients and occlusion work."""
    path = Path(path)
    side = read_sidecar(sidecar_path(path, sidecar=sidecar))
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError and friends from the archive reader
        raise ModelError(f"{file_label(path)} is not a readable TorchScript archive: "
                         f"{str(exc).strip()[:300]}", path=path) from None
    side = dataclasses.replace(side, gradcam_layer=None)  # no hooks inside: the probe says so
    return _card_and_model(net, side, source={"source": "torchscript", "file": path.name},
                           weights_sha=sha256_file(path),
                           what=f"TorchScript archive {file_label(path)}")


def _factory(spec: str, kwargs: dict, where) -> torch.nn.Module:
    if not _SPEC.match(spec):
        raise ModelError(f"model {spec!r} is not package.module:factory (e.g. "
                         "my_models.nodules:build_net)", path=where)
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot find {spec!r}: {exc}. The module must be importable (installed, "
                         "or on PYTHONPATH)", path=where) from None
    try:
        net = obj(**kwargs)
    except Exception as exc:  # the user's code
        raise ModelError(f"{spec}(**factory_kwargs) failed: {type(exc).__name__}: "
                         f"{str(exc)[:300]}", path=where) from None
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"{spec} returned a {type(net).__name__}, not a torch.nn.Module",
                         path=where)
    return net


def load_factory(spec: str, *, weights: str | Path, sidecar: str | Path
                 ) -> tuple[ExternalClassifier, ModelCard]:
    """``pkg.mod:factory`` (called with the sidecar's ``factory_kwargs``) plus *weights*."""
    side = read_sidecar(sidecar)
    net = _factory(spec, side.factory_kwargs, side.path)
    weights = Path(weights)
    _fit_weights(net, load_weights(weights), weights, f"the network {spec} builds")
    return _card_and_model(net, side, source={"source": "module", "factory": spec,
                                              "factory_kwargs": side.factory_kwargs,
                                              "weights": weights.name},
                           weights_sha=sha256_file(weights), what=f"the network {spec} builds")


def _factory_folder(folder: Path, sidecar) -> tuple[ExternalClassifier, ModelCard]:
    side_path = sidecar_path(folder, sidecar=sidecar)
    side = read_sidecar(side_path)
    if not side.factory:
        raise ModelError(f"sidecar {file_label(side_path)} names no factory: a module folder's "
                         "discovery.json says \"factory\": \"package.module:function\"",
                         path=side_path)
    if side.weights:
        weights = folder / side.weights
    else:
        found = [folder / n for n in ("model.safetensors", "model.pt") if (folder / n).is_file()]
        if not found:
            raise ModelError(f"module folder {file_label(folder)} has no model.safetensors or "
                             "model.pt; put the weights there or name them with \"weights\" in "
                             f"{SIDECAR_NAME}", path=folder)
        weights = found[0]
    return load_factory(side.factory, weights=weights, sidecar=side_path)


def load_any_model(model: str | Path | None = None, *, weights: str | Path | None = None,
                   sidecar: str | Path | None = None, compiled: bool = False
                   ) -> tuple[torch.nn.Module, ModelCard]:
    """Load any model the tool understands (module docstring); ``(module, card)``.

    Parameters
    ----------
    model : str or Path, optional
        A model folder, bundle folder, module folder, TorchScript file or ``pkg.mod:factory``;
        None: the demo model (or ``$DISCOVERY_MODEL_DIR``).
    weights, sidecar : path, optional
        For ``pkg.mod:factory`` (both required); *sidecar* also replaces the default
        ``discovery.json`` of a bundle, TorchScript file or module folder.
    compiled : bool
        For the tool's own model folders: the compiled copy when the folder has a matching
        one (:func:`~discovery.model.card.load_model`); the other kinds are unaffected.

    Raises
    ------
    ModelError
        Anything the tool cannot use, with the file, the problem and how to fix it.
    """
    if model is None:
        return load_model(None, compiled=compiled)
    text = str(model)
    path = Path(text)
    if not path.exists() and _SPEC.match(text):
        if weights is None or sidecar is None:
            raise ModelError(f"model {text!r} is a module:factory and needs --weights FILE and "
                             f"--sidecar FILE ({SIDECAR_NAME}); or put both in a folder whose "
                             f"{SIDECAR_NAME} names \"factory\"")
        return load_factory(text, weights=weights, sidecar=sidecar)
    if path.is_dir():
        if (path / CARD_NAME).is_file():
            return load_model(path, compiled=compiled)
        if (path / "configs").is_dir():
            return load_bundle(path, sidecar=sidecar)
        if (path / SIDECAR_NAME).is_file() or sidecar is not None:
            return _factory_folder(path, sidecar)
    elif path.is_file() and _is_torchscript(path):
        return load_torchscript(path, sidecar=sidecar)
    raise ModelError(f"model {file_label(path)} is none of: a model folder ({CARD_NAME}), a MONAI "
                     f"bundle folder (configs/, models/model.pt, {SIDECAR_NAME}), a TorchScript "
                     f"file (.ts, {SIDECAR_NAME} beside it), a module folder ({SIDECAR_NAME} with "
                     "\"factory\"), or package.module:factory with --weights and --sidecar",
                     path=path)


def describe(card: ModelCard) -> Probe | None:
    """The probe's findings recorded in an external model's card, or None for the tool's own."""
    arch = card.architecture
    if arch.get("name") != "external":
        return None
    layer = None if card.gradcam_layer == INPUT_LAYER else card.gradcam_layer.removeprefix("net.")
    return Probe(int(arch["n_outputs"]), arch["output"], arch.get("output_from", ""), layer,
                 arch.get("layer_from", ""), tuple(arch.get("layer_grid", ())),
                 int(arch.get("layer_channels", 0)), arch.get("cam_refusal"),
                 tuple(arch.get("grid_layers", ())))

