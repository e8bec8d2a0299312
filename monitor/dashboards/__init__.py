"""Grafana dashboards generated with grafana-foundation-sdk (issue 5). See docs/dashboards.md.

The SDK is imported only under this package, and this ``__init__`` does not import it,
so ``monitor`` commands that never build a dashboard do not load it.

* :mod:`.panels`: factories of panels, queries and variables (a new builder per call);
* :mod:`.overview`, :mod:`.quality`, :mod:`.gpu`, :mod:`.mitigations`: one dashboard each;
* :mod:`.build`: the cross-cutting stamp, the JSON encoding, ``build_dashboards(spec)``;
* :mod:`.queries`: selectors, Grafana's template expansion, reading dashboard JSON (no SDK);
* :mod:`.render`: the plotly preview of ``monitor dashboards render``;
* :mod:`.cli`: the ``monitor dashboards`` commands.
"""

__all__: list[str] = []
