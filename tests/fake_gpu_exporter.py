"""The real ``monitor gpu-exporter`` on a fake NVML with two GPUs (this machine has none).

Run as ``python tests/fake_gpu_exporter.py --listen 127.0.0.1:PORT [--timeout S]``. It
installs :func:`fake_pynvml.demo_nvml` as ``sys.modules["pynvml"]`` and then runs the
``gpu-exporter`` command itself, so every series on ``/metrics`` comes from the real
collector: GPU 0 (H100, NVLink, ECC errors, remapped rows, sw_thermal throttling, one
XID 79 event), GPU 1 (L4, PCIe, idle, PCIe replay and retired pages unsupported).
``GET /-/healthy`` answers 200 once it serves. Stop it with SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_pynvml import demo_nvml

sys.modules["pynvml"] = demo_nvml()

from monitor.cli import main  # noqa: E402 - pynvml must be the fake first

if __name__ == "__main__":
    main(["gpu-exporter", *sys.argv[1:]])
