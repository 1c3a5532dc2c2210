"""The store's exceptions: what a caller catches when a store cannot do what was asked."""
from __future__ import annotations


class StoreError(Exception):
    """A store cannot be created, opened or written as asked; the message says why."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock file."""


class StoreValueError(StoreError, ValueError):
    """Rows refused at append (NaN/inf, wrong shape, unknown source); the message names the field."""


class StoreCorruptError(StoreError):
    """The store on disk is damaged or inconsistent (a missing or garbled file, a chunk whose
    checksum differs, a marker claiming rows the arrays lack); the message names the file. The
    store was left as it was: nothing is written to (or trusted from) a damaged store."""


class StoreWriteError(StoreError):
    """A commit failed at the operating system (disk full, read-only, I/O error); the message
    names the path and the free space. The rows committed before stay intact; the failed
    commit's rows are still buffered."""
