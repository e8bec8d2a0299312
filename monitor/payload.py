"""Protocol-neutral views of a request's inputs and a response's outputs.

Protocol adapters (:mod:`monitor.protocols`) turn wire payloads into these;
feature coverage (:mod:`monitor.coverage`), prediction metrics and the capture
store (:mod:`monitor.capture`) read them. Columnar on purpose: a V2 ``[n, k]``
tensor maps to columns by slicing, and coverage loops over one column at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class Rows:
    """The rows of one inference request, by column or by record.

    Attributes:
        n: number of rows (>= 0).
        columns: spec feature name -> list of ``n`` raw values as decoded from JSON
            (``MISSING`` where the row lacks the feature). A spec feature absent
            from the whole payload may be omitted from the mapping; readers treat
            an omitted column as ``n`` x ``MISSING``. Built on first access when
            the rows came as ``records``.
        records: the row-major form, when the payload is positional (a V2
            ``[n, k]`` tensor, the common case): ``n`` lists, each holding one
            value per spec feature in spec order (``MISSING`` padded). Coverage
            and capture read it directly, without building columns: one
            reference per request instead of one list per feature.
        unexpected: number of (row, name) pairs whose name is not a spec feature
            (extra keys, extra tensor columns); feeds ``mlmon_unexpected_features_total``.
        extra: protocol-specific scalars (e.g. ``prompt_characters`` for OpenAI).
        request_id: the id the payload gives the request (V2 ``id``), if any.
    """

    __slots__ = ("_columns", "extra", "n", "names", "records", "request_id", "unexpected")

    def __init__(
        self,
        n: int,
        columns: dict[str, list[Any]] | None = None,
        unexpected: int = 0,
        extra: dict[str, float] | None = None,
        request_id: str | None = None,
        *,
        records: list[list[Any]] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if records is not None and names is None:
            raise ValueError("records need the feature names, in spec order")
        self.n = n
        self._columns = columns if columns is not None or records is not None else {}
        self.records = records
        self.names = names
        self.unexpected = unexpected
        self.extra = extra if extra is not None else {}
        self.request_id = request_id

    @property
    def columns(self) -> dict[str, list[Any]]:
        """Spec feature name -> per-row values (see the class docstring)."""
        if self._columns is None:
            assert self.records is not None and self.names is not None
            if self.records:
                transposed = zip(*self.records, strict=True)
                self._columns = {
                    name: list(col) for name, col in zip(self.names, transposed, strict=False)
                }
            else:
                self._columns = {name: [] for name in self.names}
        return self._columns

    @columns.setter
    def columns(self, value: dict[str, list[Any]]) -> None:
        self._columns = value
        self.records = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rows):
            return NotImplemented
        return (
            self.n == other.n
            and self.columns == other.columns
            and self.unexpected == other.unexpected
            and self.extra == other.extra
            and self.request_id == other.request_id
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Rows(n={self.n}, columns={self.columns!r}, unexpected={self.unexpected}, "
            f"extra={self.extra!r}, request_id={self.request_id!r})"
        )


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
