"""Batches: score a folder (manifest and hashes, resume), the executors, the sanity runs.

``score``: :func:`score_folder`; ``readahead``: the first case read in a child process
while the batch starts; ``rows``: an analysed case's rows for the store; ``executors``: local
process pool and Dask; ``sanity``: ``discovery sanity``.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "score": ["score_folder", "BatchOptions", "BatchSummary"],
    "manifest": ["case_input_hash", "case_config_hash", "HashingReader"],
    "readahead": ["ReadAhead", "start_read_ahead", "read_ahead_available"],
    "rows": ["result_rows", "region_deep", "annotation_rows"],
    "executors": ["run_pool", "run_dask", "dask_client"],
    "sanity": ["run_sanity", "SanitySummary"],
})
