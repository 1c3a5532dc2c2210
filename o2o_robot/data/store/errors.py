"""The store's exceptions: what a caller catches when a store cannot do what was asked."""
from __future__ import annotations


class StoreError(Exception):
    """A store cannot be created, opened or written as asked; the message says why."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock file."""


class StoreValueError(StoreError, ValueError):
    """Rows refused at append (NaN/inf, wrong shape, unknown source); the message names the field."""
