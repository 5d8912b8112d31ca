"""Model, adapter and draft files checked before anything reads them.

A path may name a symlink to ``/dev/zero``, a FIFO or a device: reading such
a "file" never ends (or blocks forever), so the source hash and the loaders
open files only through :func:`open_regular`, which opens without blocking
and refuses anything that is not a regular file. A safetensors file's header
is checked against the file's size (:func:`safetensors_header`) before a
tensor is read, so a header that points past the end, overlaps, or leaves
bytes unaccounted for is refused with the file, the field and the value.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import IO, Any, Dict, Iterator, List

from ..errors import CorruptModelError

#: The largest safetensors JSON header we read (the format allows 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
#: Bytes per element of the safetensors dtypes.
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                        "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
                        "F8_E4M3": 1, "F8_E5M2": 1}


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str = "model file") -> IO[bytes]:
    """Open ``path`` for reading if it resolves to a regular file; CorruptModelError otherwise.

    The file is opened with O_NONBLOCK (a FIFO would block ``open`` itself)
    and checked with ``fstat`` on the open descriptor, so a path swapped
    between a check and the open is caught as well.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CorruptModelError(f"{path}: {what} cannot be opened ({exc.strerror})") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        real = os.path.realpath(path)
        target = f" (it resolves to {real})" if real != os.path.abspath(path) else ""
        raise CorruptModelError(f"{path}: {what} is {_kind(st.st_mode)}{target}, not a regular "
                                "file; refusing to read it")
    return os.fdopen(fd, "rb")


def regular_size(path: str, what: str = "model file") -> int:
    """The size of ``path`` after checking it is a regular file (see :func:`open_regular`)."""
    with open_regular(path, what) as f:
        return os.fstat(f.fileno()).st_size


def folder_files(folder: str) -> List[str]:
    """Every file under ``folder`` (sorted), each checked to be a regular file."""
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names)
    for fp in files:
        regular_size(fp, "file of the model folder")
    return files


def read_bounded(f: IO[bytes], size: int, block: int = 1 << 22) -> Iterator[bytes]:
    """Blocks of ``f`` up to ``size`` bytes (the size fstat gave), never more."""
    left = size
    while left > 0:
        chunk = f.read(min(block, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def safetensors_header(path: str, what: str = "safetensors file") -> Dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size.

    Each tensor's ``dtype`` must be known, its ``shape`` non-negative
    integers, its ``data_offsets`` [begin, end] inside the data buffer with
    ``end - begin`` = elements x item size, tensors must not overlap and must
    cover the whole buffer (the format's own rule). Raises CorruptModelError
    naming the file, the field and the value.
    """
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CorruptModelError(f"{path}: {what} has {size} bytes, fewer than its 8-byte header length")
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(MAX_SAFETENSORS_HEADER, size - 8):
            raise CorruptModelError(f"{path}: safetensors header length {n} does not fit the file's "
                                    f"{size} bytes (at most {min(MAX_SAFETENSORS_HEADER, size - 8)})")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise CorruptModelError(f"{path}: safetensors header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptModelError(f"{path}: safetensors header is a {type(header).__name__}, not an object")
    buffer = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CorruptModelError(f"{where}: header entry {info!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise CorruptModelError(f"{where}: dtype {dtype!r} is not a safetensors dtype")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CorruptModelError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise CorruptModelError(f"{where}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
        if offsets[1] > buffer:
            raise CorruptModelError(f"{where}: data_offsets {offsets} end past the data buffer "
                                    f"({buffer} bytes; the file has {size})")
        want = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != want:
            raise CorruptModelError(f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
                                    f"shape {shape} of {dtype} needs {want}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise CorruptModelError(f"{path}: tensor {name!r} data_offsets begin at {begin}, expected {end} "
                                    "(tensors overlap or leave a gap)")
        end = stop
    if end != buffer:
        raise CorruptModelError(f"{path}: the tensors cover {end} bytes of a {buffer}-byte data buffer "
                                f"(file size {size} does not match its header)")
    return header


#: GGUF value types with a fixed size (gguf's GGUFValueType numbers -> bytes).
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _Cursor:
    """Little-endian reads from a GGUF header that never pass the end of the file."""

    def __init__(self, f: IO[bytes], size: int, path: str):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise CorruptModelError(f"{self.path}: GGUF {field} at byte {self.pos} needs {n} bytes, "
                                    f"past the end of the {self.size}-byte file")
        self.f.seek(self.pos)
        self.pos += n
        return self.f.read(n)

    def skip(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptModelError(f"{self.path}: GGUF {field} at byte {self.pos} needs {n} bytes, "
                                    f"past the end of the {self.size}-byte file")
        self.pos += n

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")

    def string(self, field: str) -> bytes:
        return self.take(self.uint(8, field + " length"), field)

    def value(self, vtype: int, field: str) -> Any:
        """A value's int (alignment), or None once skipped."""
        if vtype in _GGUF_FIXED:
            return self.uint(_GGUF_FIXED[vtype], field)
        if vtype == _GGUF_STRING:
            self.skip(self.uint(8, field + " length"), field)
            return None
        if vtype == _GGUF_ARRAY:
            item, count = self.uint(4, field + " item type"), self.uint(8, field + " count")
            if item in _GGUF_FIXED:
                self.skip(count * _GGUF_FIXED[item], field)
            elif item == _GGUF_STRING:
                for _ in range(count):
                    self.skip(self.uint(8, field + " item length"), field)
            else:
                raise CorruptModelError(f"{self.path}: GGUF {field} is an array of type {item}")
            return None
        raise CorruptModelError(f"{self.path}: GGUF {field} has unknown value type {vtype}")


def gguf_tensor_extents(path: str) -> List[tuple]:
    """(name, first byte, bytes) of every tensor of a GGUF file, checked against its size.

    Walks the header without materializing it (the tokenizer arrays are
    skipped by their length prefixes), so the check costs milliseconds where
    ``gguf.GGUFReader`` takes seconds. CorruptModelError names the file, the
    field and the value when a count, a length or a tensor's data runs past
    the end of the file.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open_regular(path, "GGUF file") as f:
        c = _Cursor(f, os.fstat(f.fileno()).st_size, path)
        if c.take(4, "magic") != b"GGUF":
            raise CorruptModelError(f"{path}: not a readable GGUF file (bad magic)")
        c.uint(4, "version")
        n_tensors, n_kv = c.uint(8, "tensor_count"), c.uint(8, "kv_count")
        alignment = 32
        for i in range(n_kv):
            key = c.string(f"key {i}").decode("utf-8", "replace")
            val = c.value(c.uint(4, f"{key} type"), key)
            if key == "general.alignment":
                if not isinstance(val, int) or not 1 <= val <= 1 << 20 or val & (val - 1):
                    raise CorruptModelError(f"{path}: GGUF general.alignment {val!r} is not a power of two")
                alignment = val
        infos = []
        for i in range(n_tensors):
            name = c.string(f"tensor {i} name").decode("utf-8", "replace")
            n_dims = c.uint(4, f"{name} n_dims")
            if n_dims > 8:
                raise CorruptModelError(f"{path}: tensor {name} n_dims {n_dims} is more than 8")
            dims = [c.uint(8, f"{name} dims") for _ in range(n_dims)]
            ttype, offset = c.uint(4, f"{name} type"), c.uint(8, f"{name} offset")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise CorruptModelError(f"{path}: tensor {name} has unknown type {ttype}") from None
            infos.append((name, offset, math.prod(dims) * type_size // block))
        start = -(-c.pos // alignment) * alignment
        out = []
        for name, offset, nbytes in infos:
            if start + offset + nbytes > c.size:
                raise CorruptModelError(
                    f"{path}: tensor {name} data at offset {offset} ({nbytes} bytes) ends at byte "
                    f"{start + offset + nbytes}, past the end of the {c.size}-byte file")
            out.append((name, start + offset, nbytes))
        return out


def check_model_files(source: str) -> None:
    """Refuse a model whose files are not regular or whose headers do not match their sizes.

    ``source`` is a GGUF file or a model folder. Costs a header walk per
    file (0.2 s for the default model's GGUF); no tensor data is read.
    """
    files = folder_files(source) if os.path.isdir(source) else [source]
    for fp in files:
        if fp.endswith(".safetensors"):
            safetensors_header(fp)
        elif fp.endswith(".gguf") or fp == source:
            gguf_tensor_extents(fp)
