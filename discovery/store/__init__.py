"""The results store: tables on SQLite or PostgreSQL, and each case's arrays on disk.

``tables``: :class:`ResultsStore`; ``arrays``: each case's arrays (compressed Zarr, one file
per case); ``backends``: the SQL dialects, where the tables live.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "tables": ["ResultsStore", "store_exists", "sanity_summary"],
    "arrays": ["save_case_arrays", "load_case_arrays", "case_file"],
    "backends": ["StoreError", "SchemaMismatch", "resolve_backend"],
})
