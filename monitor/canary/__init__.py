"""Golden-set canaries: catch a model server that answers 200 with wrong numbers (issue 7).

``golden`` records and loads golden sets, ``compare`` applies the tolerances, ``runner``
checks every replica on a schedule and exports ``mlmon_canary_*``. See docs/canary.md.
Submodules are imported where used: ``monitor.cli`` imports :mod:`monitor.canary.cli` at
start-up and must not pull in prometheus_client or aiohttp then.
"""

__all__: list[str] = []
