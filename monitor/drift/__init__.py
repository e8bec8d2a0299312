"""Data drift: compare live inputs with a training baseline.

``compute(reference, current)`` returns a :class:`DriftResult` with evidently's
scores (``fast`` engine: our vectorised implementation; ``evidently``: evidently
itself; ``spark``: evidently's Spark engine). ``monitor drift run`` and
``monitor drift serve`` (:mod:`monitor.drift.job`) are thin layers over it.
"""

from monitor.drift.core import ENGINES, ColumnStats, DriftResult, FeatureDrift, compute
from monitor.drift.methods import METHODS, Method, get_method
from monitor.drift.reference import ReferenceProfile, load_reference

__all__ = [
    "ENGINES",
    "METHODS",
    "ColumnStats",
    "DriftResult",
    "FeatureDrift",
    "Method",
    "ReferenceProfile",
    "compute",
    "get_method",
    "load_reference",
]
