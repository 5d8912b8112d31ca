"""System-prompt KV cache: keep the KV rows of common prompt prefixes.

A prefix is everything the chat template renders before the user's message
(the system prompt, default or given). Its KV rows are copied out of the KV
cache after they are first computed and copied back for later requests with
the same prefix and the same LoRA adapter. Bounded by bytes; the least
recently used entry goes first.

Restored rows are bit-identical to recomputed ones because the generator
always prefills the prefix as its own chunk, cache or no cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

from ..backends.kv_cache import Snapshot

Key = Tuple[str, str, int]


def prefix_key(token_ids: Sequence[int], adapter: str = "") -> Key:
    """(adapter, sha256 of the ids, length): the cache key of a prefix."""
    h = hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()
    return adapter, h, len(token_ids)


class PromptCache:
    """LRU map from prefix key to KV snapshot, bounded by total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[Key, Tuple[Snapshot, int]]" = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Optional[Snapshot]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Key, snap: Snapshot, nbytes: int) -> bool:
        """Store a snapshot; returns False when it alone exceeds the budget."""
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return True
            while self._entries and self.nbytes + nbytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self.nbytes -= old
            self._entries[key] = (snap, nbytes)
            self.nbytes += nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0
