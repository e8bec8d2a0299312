"""Protocol-neutral views of a request's inputs and a response's outputs.

Protocol adapters (:mod:`monitor.protocols`) turn wire payloads into these;
feature coverage (:mod:`monitor.coverage`), prediction metrics and the capture
store (:mod:`monitor.capture`) read them. Columnar on purpose: a V2 ``[n, k]``
tensor maps to columns by slicing, and coverage loops over one column at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["MISSING", "Predictions", "Rows"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing()
"""Marks a feature absent from one row (a record without the key, a short row).

Distinct from ``None``, which is an explicit JSON ``null``."""


@dataclass(slots=True)
class Rows:
    """The rows of one inference request, by column.

    Attributes:
        n: number of rows (>= 0).
        columns: spec feature name -> list of ``n`` raw values as decoded from JSON
            (``MISSING`` where the row lacks the feature). A spec feature absent
            from the whole payload may be omitted from the mapping; readers treat
            an omitted column as ``n`` x ``MISSING``.
        unexpected: number of (row, name) pairs whose name is not a spec feature
            (extra keys, extra tensor columns); feeds ``mlmon_unexpected_features_total``.
        extra: protocol-specific scalars (e.g. ``prompt_characters`` for OpenAI).
        request_id: the id the payload gives the request (V2 ``id``), if any.
    """

    n: int
    columns: dict[str, list[Any]] = field(default_factory=dict)
    unexpected: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(slots=True)
class Predictions:
    """The predictions of one inference response.

    Attributes:
        outputs: output name -> per-row values, in response order (the first
            entry is the model's primary output). Values are raw JSON scalars;
            a row whose output is not a scalar is left as decoded.
        usage: token usage of an OpenAI-compatible response
            (``{"prompt": int, "completion": int}``), when present.
        version: the model version the response names (V2 ``model_version``), if any.
    """

    outputs: dict[str, list[Any]] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    version: str | None = None
