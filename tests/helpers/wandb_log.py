"""Reads a W&B offline run file (`run-*.wandb`) back, so tests can check what a run would upload without
any network or account."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# -- reading offline runs back ----------------------------------------------------------------------
# A `.wandb` file is a LevelDB-style log: a 7-byte header (":W&B", 0xBEE1, version 0), then 32 KiB blocks of
# records (crc32 4 bytes, length 2 bytes, type 1 byte) whose payloads join into wandb's `Record` protobufs.
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_transaction_log(path: str | Path) -> Iterator[Any]:
    """The `wandb.proto.wandb_internal_pb2.Record`s of an offline run's `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, payload = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record
