"""monitor: observability, drift monitoring and auto-mitigation for ML model serving.

Public entry points: the ``monitor`` command line (:mod:`monitor.cli`) and the
spec loader :func:`monitor.spec.load_spec`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
