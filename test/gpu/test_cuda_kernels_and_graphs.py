"""cuda-python layer on a real GPU: buffers, async copies, the embedding and KV-compaction
kernels against NumPy (kv_cache.KVCache is the oracle of compaction), CUDA graph capture
and replay of them, and the device KV cache's snapshot / restore."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.backends.tensorrt.cuda_rt import (DeviceBuffer, Event, GraphCache, PinnedBuffer, bindings_version,
                                                   pointer_table)
from edgellm_ros.backends.tensorrt.cuda_kernels import device_kernels
from edgellm_ros.errors import BackendError
from edgellm_ros.backends.kv_cache import KVCache

pytestmark = pytest.mark.gpu


def test_device_reports_itself(device):
    info = device.info()
    assert info["name"] and info["total_memory_mib"] > 1024
    assert device.capability[0] >= 5 and device.sm.startswith("sm_")
    assert bindings_version()[0].isdigit()


def test_pinned_async_round_trip_and_event_timing(device, stream):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((257, 33)).astype(np.float32)
    pin_in, pin_out = PinnedBuffer(a.shape, np.float32), PinnedBuffer(a.shape, np.float32)
    pin_in.array[...] = a
    buf = DeviceBuffer.empty(a.shape, np.float32)
    start, end = Event(), Event()
    start.record(stream)
    buf.upload(pin_in.array, stream)
    buf.download(pin_out.array, stream)
    end.record(stream)
    stream.synchronize()
    assert np.array_equal(pin_out.array, a)
    assert end.elapsed_ms(start) >= 0.0
    assert buf.ptr % 256 == 0
    with pytest.raises(BackendError, match="overruns"):
        buf.upload(np.zeros(10, np.float32), stream, offset=buf.nbytes - 8)
    buf.zero(stream)
    assert not buf.download(stream=None).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_embedding_gather_matches_numpy(device, stream, dtype):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((1000, 96)).astype(dtype)
    dev_table = DeviceBuffer.from_host(table)
    ids = np.array([5, 0, 999, 5, 123, 1000, -1], np.int64)    # the last two are out of range
    dev_ids = DeviceBuffer.from_host(ids)
    out = DeviceBuffer.empty((len(ids), 96), dtype)
    device_kernels(device).gather_rows(dev_table, dev_ids.ptr, len(ids), out.ptr, stream)
    stream.synchronize()
    got = out.download()
    assert np.array_equal(got[:5], table[ids[:5]])
    assert not got[5:].any()


def _eagle_rows(rng, P, tree):
    """Accepted verify rows of an EAGLE step: increasing, 1..tree, as speculative.py moves them."""
    n = int(rng.integers(1, tree + 1))
    rows = np.sort(rng.choice(np.arange(1, tree + 1), n, replace=False))
    return P + rows, P + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_compaction_kernel_matches_kvcache_move_rows(device, stream, dtype):
    from edgellm_ros.backends.tensorrt.cuda_kv import DeviceKVCache
    rng = np.random.default_rng(2)
    L, S, KVH, D = 3, 96, 2, 16
    host = KVCache(L, S, KVH, D, np.dtype(dtype))
    for b in host.keys + host.values:
        b[...] = rng.standard_normal(b.shape)
    dev = DeviceKVCache(device, stream, L, S, KVH, D, np.dtype(dtype))
    dev.load_host(host.keys, host.values)
    for P in (0, 7, 40, 70):
        src, dst = _eagle_rows(rng, P, 16)
        host.move_rows(src, dst)
        dev.move_rows(src, dst)
        keys, values = dev.to_host()
        for a, b in zip(keys + values, host.keys + host.values):
            assert np.array_equal(a, b), (P, src)
    # adjacent rows (nothing to move but itself) and a row read after being written are handled
    host.move_rows(np.array([5, 6, 7]), 5)
    dev.move_rows(np.array([5, 6, 7]), 5)
    assert np.array_equal(dev.to_host()[0][1], host.keys[1])
    with pytest.raises(BackendError, match="overwritten before it is read"):
        dev.move_rows(np.array([9, 3]), 3)
    with pytest.raises(BackendError, match="outside"):
        dev.move_rows(np.array([S]), 0)
    dev.close()


def test_device_kv_snapshot_restore(device, stream):
    from edgellm_ros.backends.tensorrt.cuda_kv import DeviceKVCache
    rng = np.random.default_rng(3)
    L, S, KVH, D = 2, 64, 2, 8
    dev = DeviceKVCache(device, stream, L, S, KVH, D)
    keys = [rng.standard_normal((S, KVH, D)).astype(np.float32) for _ in range(L)]
    values = [rng.standard_normal((S, KVH, D)).astype(np.float32) for _ in range(L)]
    dev.load_host(keys, values)
    snap = dev.snapshot(20)
    assert dev.snapshot_nbytes(20) == snap.data.nbytes == 2 * L * 20 * KVH * D * 4
    sk, sv = snap.to_host()
    assert np.array_equal(sk[1].reshape(20, KVH, D), keys[1][:20])
    assert np.array_equal(sv[0].reshape(20, KVH, D), values[0][:20])
    dev.load_host([np.zeros_like(k) for k in keys], [np.zeros_like(v) for v in values])
    assert dev.restore(snap) == 20
    k2, v2 = dev.to_host()
    assert np.array_equal(k2[0][:20], keys[0][:20]) and not k2[0][20:].any()
    assert np.array_equal(v2[1][:20], values[1][:20])
    other = DeviceKVCache(device, stream, L + 1, S, KVH, D)
    with pytest.raises(BackendError, match="not taken from a KV cache of this shape"):
        other.restore(snap)


def test_scratch_commit_writes_rows_p_to_p_plus_n_in_every_layer(device, stream):
    from edgellm_ros.backends.tensorrt.cuda_kv import DeviceKVCache
    rng = np.random.default_rng(4)
    L, S, KVH, D = 3, 40, 2, 8
    dev = DeviceKVCache(device, stream, L, S, KVH, D, scratch_rows=5)
    scratch = [rng.standard_normal((5, KVH, D)).astype(np.float32) for _ in range(2 * L)]
    for b, a in zip(dev.scratch_keys + dev.scratch_values, scratch):
        b.upload(a)
    args = DeviceBuffer.from_host(np.array([3, 11, 0, 0], np.int32))
    dev.commit_scratch(args.ptr)
    keys, values = dev.to_host()
    for i, buf in enumerate(keys + values):
        assert np.array_equal(buf[11:14], scratch[i][:3])
        assert not buf[:11].any() and not buf[14:].any()


def test_graph_capture_replays_kernels_with_new_inputs(device, stream):
    """gather + compaction captured once; each replay reads the new ids / rows from pinned memory."""
    rng = np.random.default_rng(5)
    k = device_kernels(device)
    table = rng.standard_normal((50, 32)).astype(np.float32)
    dev_table = DeviceBuffer.from_host(table)
    ids_h, ids_d = PinnedBuffer((4,), np.int64), DeviceBuffer.empty((4,), np.int64)
    out_d, out_h = DeviceBuffer.empty((4, 32), np.float32), PinnedBuffer((4, 32), np.float32)
    S, W = 64, 32
    bufs = [DeviceBuffer.from_host(rng.standard_normal((S, W)).astype(np.float32)) for _ in range(4)]
    host = KVCache(2, S, 1, W)
    for hb, db in zip(host.keys + host.values, bufs):
        hb[...] = db.download().reshape(S, 1, W)
    table_ptrs = pointer_table(b.ptr for b in bufs)
    src_h, src_d = PinnedBuffer((16,), np.int32), DeviceBuffer.empty((16,), np.int32)
    args_h, args_d = PinnedBuffer((4,), np.int32), DeviceBuffer.empty((4,), np.int32)

    def ops(s):
        ids_d.upload(ids_h.array, s)
        src_d.upload(src_h.array, s)
        args_d.upload(args_h.array, s)
        k.gather_rows(dev_table, ids_d.ptr, 4, out_d.ptr, s)
        k.move_rows(table_ptrs.ptr, 4, src_d.ptr, args_d.ptr, W * 4, s)
        out_d.download(out_h.array, s)

    graphs = GraphCache(stream, log=lambda m: None)
    replays = []
    for step in range(5):
        ids = rng.integers(0, 50, 4)
        src, dst = _eagle_rows(rng, 3 + 8 * step, 6)
        ids_h.array[...] = ids
        src_h.array[:len(src)] = src
        args_h.array[:2] = (len(src), dst)
        replays.append(graphs.run("step", ops))
        stream.synchronize()
        host.move_rows(src, dst)
        assert np.array_equal(out_h.array, table[ids]), step
        for hb, db in zip(host.keys + host.values, bufs):
            assert np.array_equal(db.download().reshape(S, 1, W), hb), step
    assert replays == [True] * 5 and graphs.captures == 1 and graphs.replays == 5
    graphs.clear()


def test_graph_capture_failure_falls_back_and_is_logged(device, stream):
    logged = []
    graphs = GraphCache(stream, log=logged.append)
    hits = []

    def ops(s):
        hits.append(1)
        s.synchronize()      # not allowed while capturing

    assert graphs.run("bad", ops, warmup=True) is False     # warm-up: plain
    assert graphs.run("bad", ops, warmup=True) is False     # capture fails -> plain
    assert graphs.run("bad", ops, warmup=True) is False     # remembered: plain, no new attempt
    assert len(logged) == 1 and "bad" in logged[0] and "without a graph" in logged[0]
    assert len(hits) == 4     # warm-up, the failed capture's attempt, two plain runs
