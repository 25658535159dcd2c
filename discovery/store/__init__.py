"""The results store: tables on SQLite or PostgreSQL, and each case's arrays on disk.

``tables``: :class:`ResultsStore` and the per-case viewer arrays; ``backends``: the SQL
dialects, where the tables live.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "tables": ["ResultsStore", "save_case_arrays", "load_case_arrays", "store_exists",
               "sanity_summary"],
    "backends": ["StoreError", "SchemaMismatch", "resolve_backend"],
})
