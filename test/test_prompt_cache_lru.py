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
