"""Engine selection: FACE_ENGINE is the single switch; one engine instance per process."""

from __future__ import annotations

import threading

from ..config import Settings
from .base import Comparison, Deadline, Engine, Face, Reference

_lock = threading.Lock()
_engines: dict[Settings, Engine] = {}


def get_engine(settings: Settings) -> Engine:
    """Build the engine for these settings once; later calls share it (models, pools, caches)."""
    with _lock:
        engine = _engines.get(settings)
        if engine is None:
            if settings.engine == "mxface":
                from .mxface import MXFaceEngine

                engine = MXFaceEngine(settings)
            else:
                from .local import LocalEngine

                engine = LocalEngine(settings)
            _engines[settings] = engine
        return engine


__all__ = ["Comparison", "Deadline", "Engine", "Face", "Reference", "get_engine"]
