"""Is a results folder current: written with this tool's table schema, a given model and
this version's pattern settings?

``python -m discovery.batch.current RESULTS [--model DIR]`` exits 0 when it is, 1 with the
reason on stderr when it is not (a schema from another version of the tool, other weights,
patterns clustered with other settings or descriptors, no results), so that ``make demo``
scores again instead of stopping at the refusal or showing clusters an older version made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from discovery.model.card import default_model_dir, load_card
from discovery.patterns.clustering import PatternSettings
from discovery.store.backends import StoreError, store_exists
from discovery.store.tables import ResultsStore

__all__ = ["stale_reason"]


def stale_reason(results_dir: str | Path, *, model_dir: str | Path | None = None,
                 pattern_settings: PatternSettings | None = None) -> str | None:
    """Why *results_dir* should be scored again, or None when it is current.

    Parameters
    ----------
    results_dir : path
        A folder written by ``discovery score``.
    model_dir : path, optional
        The model the results should come from (default: the demo model).
    pattern_settings : PatternSettings, optional
        The clustering the patterns should come from (default: ``PatternSettings()``, this
        version's); compared with the store's ``pattern_settings`` meta, written by every
        clustering since 2026-12-06 (a folder without it is stale).

    Returns
    -------
    str or None
        The reason, in words ("no results", the store's own refusal, "scored with other
        weights ...", "patterns clustered ..."), or None.
    """
    results_dir = Path(results_dir)
    if not store_exists(results_dir):
        return f"no results in {results_dir}"
    try:
        store = ResultsStore(results_dir, create=False)
    except StoreError as exc:
        return str(exc)
    try:
        meta = store.meta()
        clusters = store.clusters()
    finally:
        store.close()
    stored = meta.get("model_sha256")
    card = load_card(model_dir or default_model_dir())
    expected = card.weights_sha256
    if stored != expected:
        return (f"{results_dir} was scored with model weights {str(stored)[:12]}..., not "
                f"{expected[:12]}...")
    if (meta.get("verdict_rule_sha256") or "") != card.verdict_rule_sha256:
        return (f"{results_dir} was scored with another verdict rule than the model card's "
                "(or none); scoring the folder again decides the verdicts by the card's rule")
    settings = pattern_settings if pattern_settings is not None else PatternSettings()
    older = (f"the patterns in {results_dir} were clustered with other settings or by an "
             "older version of the clustering; scoring the folder again re-clusters them "
             "(the cases themselves are not recomputed)")
    if meta.get("pattern_settings") != repr(settings):
        return older
    if (settings.method == "gmm" and settings.mixture_runs > 1 and len(clusters)
            and clusters["stability"].isna().all()):
        return older + " and measures each cluster's stability"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discovery.batch.current",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    args = ap.parse_args(argv)
    reason = stale_reason(args.results, model_dir=args.model)
    if reason is not None:
        sys.stderr.write(f"not current: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
