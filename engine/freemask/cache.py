"""The in-memory memo of what Free Mask derives from one image's features.

A slider move re-runs post-processing on the same ``Features``; the pyramid queries, their soft
masks on the ranking grid, the pooled key map and the guide statistics of the refinement do not
depend on the moved value, so they are kept here. Each *kind* holds one entry (a new pyramid or
radius replaces the old one), and a lock makes two workers that post-process the same image at
once (the panel's slider worker and a folder run) compute an entry once and never see it half
written.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable, Iterator, Literal, TypeVar

T = TypeVar("T")
MemoKind = Literal["ranked", "score_keys", "guide", "maskcut", "classical", "grouping", "grey"]


class FeatureMemo:
    """``get(kind, key, compute)``: the value memoised for ``kind`` if it was made for ``key``, else
    ``compute()``'s, which then replaces it. Iterating yields the ``(kind, key)`` pairs held."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[MemoKind, tuple[Hashable, object]] = {}

    def get(self, kind: MemoKind, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            held = self._entries.get(kind)
            if held is not None and held[0] == key:
                return held[1]  # type: ignore[return-value]
            value = compute()
            self._entries[kind] = (key, value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __iter__(self) -> Iterator[tuple[MemoKind, Hashable]]:
        with self._lock:
            return iter([(kind, key) for kind, (key, _value) in self._entries.items()])

    def __len__(self) -> int:
        return len(self._entries)
