"""GPU health from NVML (issue 7). See docs/metrics.md, GPU section."""
