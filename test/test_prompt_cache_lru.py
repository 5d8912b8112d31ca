"""The prompt cache is bounded by bytes and evicts the least recently used entry."""

from __future__ import annotations

import numpy as np

from edgellm_ros.backends.kv_cache import KVCache
from edgellm_ros.runtime.prompt_cache import PromptCache, prefix_key


def _snap(kv: KVCache, rows: int):
    return kv.snapshot(rows), kv.snapshot_nbytes(rows)


def test_lru_eviction_by_bytes():
    kv = KVCache(2, 32, 1, 4)
    one = kv.snapshot_nbytes(4)
    cache = PromptCache(max_bytes=3 * one)
    keys = [prefix_key([i, i + 1, i + 2, i + 3]) for i in range(4)]
    for k in keys[:3]:
        assert cache.put(k, *_snap(kv, 4))
    assert cache.get(keys[0]) is not None          # keys[0] is now the most recent
    cache.put(keys[3], *_snap(kv, 4))              # evicts keys[1], the least recent
    assert cache.get(keys[1]) is None
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert cache.nbytes == 3 * one


def test_a_long_prompt_does_not_flush_the_pinned_system_parts():
    """Pinned entries (system parts) go only when every unpinned one has gone."""
    kv = KVCache(2, 32, 1, 4)
    small, big = kv.snapshot_nbytes(2), kv.snapshot_nbytes(16)
    cache = PromptCache(max_bytes=small + big + kv.snapshot_nbytes(8))
    system = prefix_key([1, 2])
    assert cache.put(system, kv.snapshot(2), small, pinned=True)
    other = prefix_key([5, 6, 7, 8, 9, 10, 11, 12])
    cache.put(other, *_snap(kv, 8))
    cache.get(system)       # the system part is now the most recent, other the least
    cache.get(other)        # ... and now other is the most recent: LRU alone would evict system
    long_prompt = prefix_key(list(range(100, 116)))
    cache.put(long_prompt, *_snap(kv, 16))
    cache.put(prefix_key(list(range(200, 216))), *_snap(kv, 16))   # evicts both unpinned ones
    assert cache.get(system) is not None
    assert cache.get(other) is None and cache.get(long_prompt) is None
    assert cache.nbytes == small + big
    # with nothing unpinned left, a pinned entry goes too
    assert cache.put(prefix_key(list(range(300, 325))), *_snap(kv, 25))
    assert cache.get(system) is None


def test_an_entry_larger_than_the_budget_is_not_stored():
    kv = KVCache(2, 32, 1, 4)
    cache = PromptCache(max_bytes=kv.snapshot_nbytes(4) - 1)
    assert not cache.put(prefix_key([1, 2, 3, 4]), *_snap(kv, 4))
    assert len(cache) == 0


def test_keys_include_the_adapter():
    assert prefix_key([1, 2], "radiology") != prefix_key([1, 2], "")


def test_snapshot_and_restore_round_trip():
    kv = KVCache(3, 16, 2, 4)
    rng = np.random.default_rng(0)
    for b in kv.keys + kv.values:
        b[:] = rng.standard_normal(b.shape)
    snap = kv.snapshot(5)
    want = [b[:5].copy() for b in kv.keys + kv.values]
    for b in kv.keys + kv.values:
        b[:] = 0
    assert kv.restore(snap) == 5
    assert all(np.array_equal(b[:5], w) for b, w in zip(kv.keys + kv.values, want))
