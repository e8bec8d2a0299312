"""Grafana dashboards generated with grafana-foundation-sdk (issue 5). See docs/dashboards.md."""
