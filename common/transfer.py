"""Half-precision transfer of train replies (run config `transfer-dtype`).

A site casts the float32 arrays of its reply to float16 or bfloat16 after training (DP noise included:
the cast is post-processing, privacy is unchanged); the server casts them back to float32 before any
check or aggregation. Integer arrays (BatchNorm's `num_batches_tracked`) travel as they are.

float16 travels as a NumPy array (Flower's own serialisation). NumPy has no bfloat16, so a bfloat16
array travels as its raw little-endian 16-bit words with `dtype="bfloat16"` and the stype
`BFLOAT16_STYPE`; `Array.numpy()` refuses such an array, so nothing reads it by mistake.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedward.common.errors import ConfigError

TransferDtype = Literal["float32", "float16", "bfloat16"]
TRANSFER_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
BFLOAT16_STYPE = "fedward.bfloat16-le"  # raw little-endian bfloat16 words


def _check(dtype: str) -> None:
    if dtype not in TRANSFER_DTYPES:
        raise ConfigError(f"transfer-dtype: expected one of {', '.join(TRANSFER_DTYPES)}, got {dtype!r}")


def _to_bfloat16(values: np.ndarray) -> Array:
    """float32 -> bfloat16 (round to nearest even, by torch), as raw words."""
    import torch  # the site has torch; the server never encodes

    words = torch.from_numpy(np.ascontiguousarray(values)).to(torch.bfloat16).view(torch.int16).numpy()
    return Array(
        dtype="bfloat16", shape=tuple(values.shape), stype=BFLOAT16_STYPE, data=words.astype("<i2").tobytes()
    )


def _from_bfloat16(array: Array) -> np.ndarray | None:
    """Raw bfloat16 words -> float32 (exact: bfloat16 is float32's upper half); None when the data
    does not fit the shape (left as sent: the reply's checks reject it)."""
    if len(array.data) != 2 * int(np.prod(array.shape, dtype=np.int64)):
        return None
    words = np.frombuffer(array.data, dtype="<u2")
    return (words.astype(np.uint32) << 16).view(np.float32).reshape(array.shape)


def encode(record: ArrayRecord, dtype: str) -> ArrayRecord:
    """`record` with its float32 arrays cast to `dtype` (other arrays, and float32 transfer, unchanged)."""
    _check(dtype)
    if dtype == "float32":
        return record
    out = ArrayRecord()
    for key, array in record.items():
        values = array.numpy()
        if values.dtype != np.float32:
            out[key] = array
        elif dtype == "float16":
            out[key] = Array(values.astype(np.float16))
        else:
            out[key] = _to_bfloat16(values)
    return out


def decode(record: ArrayRecord, dtype: str) -> ArrayRecord:
    """`record` with its `dtype` arrays (as `encode` wrote them) cast back to float32; others unchanged."""
    _check(dtype)
    if dtype == "float32":
        return record
    out = ArrayRecord()
    for key, array in record.items():
        if dtype == "bfloat16" and array.dtype == "bfloat16" and array.stype == BFLOAT16_STYPE:
            values = _from_bfloat16(array)
            out[key] = array if values is None else Array(values)
        elif dtype == "float16" and array.dtype == "float16":
            out[key] = Array(array.numpy().astype(np.float32))
        else:
            out[key] = array
    return out


def encode_reply(content: RecordDict, dtype: str) -> None:
    """Cast every ArrayRecord of a train reply for transfer (in place)."""
    for name, record in list(content.array_records.items()):
        content[name] = encode(record, dtype)


def decode_reply(content: RecordDict, dtype: str) -> None:
    """Cast every ArrayRecord of a received train reply back to float32 (in place)."""
    for name, record in list(content.array_records.items()):
        content[name] = decode(record, dtype)
