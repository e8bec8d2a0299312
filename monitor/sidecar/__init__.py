"""The sidecar exporter: a transparent reverse proxy that emits RED metrics,
feature coverage and prediction metrics, and captures sampled inputs."""

from monitor.sidecar.app import Sidecar, run_sidecar
from monitor.sidecar.metrics import SidecarMetrics

__all__ = ["Sidecar", "SidecarMetrics", "run_sidecar"]
