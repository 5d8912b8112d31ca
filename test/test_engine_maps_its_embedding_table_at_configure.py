"""The engine's memory-mapped embedding table is resident from configure on.

Left to page in lazily, each token seen for the first time maps the page of its row,
and a node's resident memory creeps up with the variety of its prompts (a 1,000-ask
soak of new prompts: +2.85%) until the whole table is mapped. So configure maps every
page (engine.map_resident): the smaps entry of the table's mapping is wholly resident.
"""

import numpy as np


def mapping_of(address: int):
    """(size, resident) in KiB of this process's mapping that holds ``address``."""
    found = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                found = {"path": head[5] if len(head) > 5 else ""} if lo <= address < hi else None
            elif found is not None and head[0] in ("Size:", "Rss:"):
                found[head[0][:-1]] = int(head[1])
                if "Rss" in found and "Size" in found:
                    return found
    raise AssertionError(f"no mapping holds {address:#x}")


def test_the_embedding_table_is_wholly_resident_after_load(engine):
    table = engine.decoder.embeddings
    m = mapping_of(table.ctypes.data)
    assert m["path"].endswith("embeddings.npy"), m
    # the file is the table plus a header page; a mapping starts at a page boundary
    assert m["Rss"] >= m["Size"] - 8, f"only {m['Rss']} of {m['Size']} KiB of the table mapped: {m}"


def test_map_resident_maps_a_table_whose_rows_are_smaller_than_a_page(tmp_path):
    from edgellm_ros.runtime.engine import map_resident
    path = tmp_path / "t.npy"
    np.save(path, np.arange(4096 * 300, dtype=np.float32).reshape(-1, 300))   # rows of 1,200 bytes
    table = np.load(path, mmap_mode="r")
    before = mapping_of(table.ctypes.data)
    map_resident(table)
    after = mapping_of(table.ctypes.data)
    assert before["Rss"] < before["Size"] / 2, before
    assert after["Rss"] >= after["Size"] - 8, after
