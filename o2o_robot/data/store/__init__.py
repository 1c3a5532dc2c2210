"""Episodic transition store (the package's modules: see transition_store.py)."""
from o2o_robot.data.store.transition_store import (LOCK, MARKER, META, StoreError, StoreLockedError,
                                                   StoreValueError, TransitionStore)

__all__ = ["LOCK", "MARKER", "META", "StoreError", "StoreLockedError", "StoreValueError",
           "TransitionStore"]
