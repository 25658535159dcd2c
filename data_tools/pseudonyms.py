"""Pseudonymous identifiers: the names under which cases and patients leave the tool.

A case is named ``case-<10 hex>``: an HMAC-SHA256 of a *source key* (the case folder's
resolved path, or a study UID) under a user key.  The same source and key always give the
same id, so results can be merged across runs; without the key the id cannot be traced back.
The key comes from the ``DISCOVERY_ID_KEY`` environment variable, or a documented default
that is fine for synthetic data and must be replaced for real patients.

This module needs only the standard library, so naming cases does not import pydicom;
:mod:`data_tools.deid` (DICOM de-identification) re-exports it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["DEFAULT_KEY_NOTICE", "id_key", "pseudonymous_id"]

_DEFAULT_KEY = "ct-nodule-discovery-default-key"
DEFAULT_KEY_NOTICE = (
    "pseudonymous ids use the built-in default key; set DISCOVERY_ID_KEY to a secret of your "
    "own before scoring real patients"
)


def id_key(key: str | bytes | None = None) -> bytes:
    """Return the secret as bytes: *key*, else ``$DISCOVERY_ID_KEY``, else the built-in
    default (see :data:`DEFAULT_KEY_NOTICE`)."""
    if key is None:
        key = os.environ.get("DISCOVERY_ID_KEY", _DEFAULT_KEY)
    return key.encode() if isinstance(key, str) else bytes(key)


def pseudonymous_id(source: str, *, key: str | bytes | None = None, prefix: str = "case") -> str:
    """Return ``'<prefix>-<10 hex digits>'`` for *source* under *key*.

    Parameters
    ----------
    source : str
        Anything that identifies the case at the source (a path, a UID, a user's case id).
    key : str or bytes, optional
        The secret; defaults to ``$DISCOVERY_ID_KEY`` or the built-in default.
    prefix : str
        Leading word of the id.
    """
    digest = hmac.new(id_key(key), source.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:10]}"
