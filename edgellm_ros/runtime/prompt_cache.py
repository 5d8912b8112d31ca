"""Prompt-prefix KV cache: keep the KV rows of prompt prefixes requests share.

A prompt has cuts: the positions where the rendered system part ends and
where each message of a conversation ends (Generator.build_prompt). The KV
rows up to a cut are copied out of the KV cache after a request and copied
back for a later request whose ids start with the same tokens up to one of
its own cuts (a conversation's next turn starts with the previous turn's
prompt), with the same LoRA adapter (and draft). :meth:`PromptCache.longest`
finds the longest such prefix with one hash pass over the ids. Bounded by
bytes; the least recently used entry goes first.

Restored rows are bit-identical to recomputed ones because the generator
always prefills the tokens between two cuts as chunks of their own, cache or
no cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple


Key = Tuple[str, str, int]


def prefix_keys(token_ids: Sequence[int], cuts: Sequence[int], adapter: str = "",
                salts: Sequence[str] = ()) -> List[Key]:
    """The keys of the prefixes ``token_ids[:c]`` for each of the ascending ``cuts``.

    Computed in one pass: (adapter, sha256 of the ids, length). ``salts[i]`` (e.g.
    digests of the images shown in it) is hashed with the ids between cut i-1 and cut i.
    """
    h = hashlib.sha256()
    keys, done = [], 0
    for i, c in enumerate(cuts):
        h.update("".join(f"{t}," for t in token_ids[done:c]).encode())
        if i < len(salts) and salts[i]:
            h.update(f"[{salts[i]}]".encode())
        done = c
        keys.append((adapter, h.hexdigest(), c))
    return keys


def prefix_key(token_ids: Sequence[int], adapter: str = "") -> Key:
    """The cache key of the whole of ``token_ids`` as a prefix."""
    return prefix_keys(token_ids, [len(token_ids)], adapter)[0]


class PromptCache:
    """LRU map from prefix key to KV snapshot, bounded by total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # key -> (snapshot: a KV Snapshot, or the generator's (base, draft) pair; its bytes)
        self._entries: "OrderedDict[Key, Tuple[Any, int]]" = OrderedDict()
        self._pinned: set = set()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Optional[Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def longest(self, token_ids: Sequence[int], cuts: Sequence[int], adapter: str = "",
                salts: Sequence[str] = ()) -> Tuple[int, Any]:
        """Find the longest cached prefix ``token_ids[:cut]`` over the ascending ``cuts``.

        Returns (cut, entry), or (0, None); salted as :func:`prefix_keys`; counts one
        hit or one miss.
        """
        keys = prefix_keys(token_ids, cuts, adapter, salts)
        with self._lock:
            for key in reversed(keys):
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return key[2], entry[0]
            self.misses += 1
            return 0, None

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: Key, snap: Any, nbytes: int, pinned: bool = False) -> bool:
        """Store a snapshot; returns False when it alone exceeds the budget.

        ``pinned`` entries are evicted after every unpinned one.
        """
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return True
            while self._entries and self.nbytes + nbytes > self.max_bytes:
                old = next((k for k in self._entries if k not in self._pinned),
                           next(iter(self._entries)))
                self.nbytes -= self._entries.pop(old)[1]
                self._pinned.discard(old)
            self._entries[key] = (snap, nbytes)
            self.nbytes += nbytes
            if pinned:
                self._pinned.add(key)
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._pinned.clear()
            self.nbytes = 0
