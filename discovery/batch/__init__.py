"""Batches: score a folder (manifest and hashes, resume), the executors, the sanity runs.

``score``: :func:`score_folder`; ``executors``: local process pool and Dask; ``sanity``:
``discovery sanity``.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "score": ["score_folder", "BatchOptions", "BatchSummary"],
    "manifest": ["case_input_hash", "case_config_hash", "HashingReader"],
    "executors": ["run_pool", "run_dask", "dask_client"],
    "sanity": ["run_sanity", "SanitySummary"],
})
