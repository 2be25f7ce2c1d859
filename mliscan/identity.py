"""One identity for a computed result: content-addressed, versioned.

A key is the SHA-256 of the endpoints' content hashes, every setting that changes a number
(``Spec.numeric_settings``, the data actually read, the architecture and its options) and
``NUMERIC_VERSION``. The grid store, the plane store and the report cache all use it, so an
entry whose inputs changed (a run retrained in place, other settings, a new numeric code) is
never read back: its key differs, and it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Bump when a change to the numeric code changes any stored number (metrics, BN policy,
# evaluation order): every cached entry is then recomputed.
NUMERIC_VERSION = 3  # 3: Gauss lengths through layer norm corrected (see CHANGELOG)


def key(kind: str, endpoints: list[str], settings: dict[str, Any], length: int = 20) -> str:
    """The identity of a ``kind`` of result ('path', 'plane-point', 'report') computed from
    ``endpoints`` (content hashes, in order) under ``settings``."""
    blob = json.dumps(
        {
            "kind": kind,
            "version": NUMERIC_VERSION,
            "endpoints": list(endpoints),
            "settings": settings,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (for endpoints known by their files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
