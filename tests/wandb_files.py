"""Read an offline wandb run back from its `run-*.wandb` file, as `wandb sync` would.

The file is W&B's record log: a 7-byte header, then LevelDB-style records (checksum, length,
type) in 32 KiB blocks, each carrying a serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = path.read_bytes()
    assert data[: len(HEADER)] == HEADER, f"{path}: not a wandb run file"
    pos, pending = len(HEADER), b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending += chunk
        if kind in (FULL, LAST):
            yield pb.Record.FromString(pending)
            pending = b""


def history(run_dir: Path) -> list[dict]:
    """Every logged row of the run, with its `_step`."""
    (path,) = run_dir.glob("run-*.wandb")
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return rows


def config(run_dir: Path) -> dict:
    (path,) = run_dir.glob("run-*.wandb")
    values = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = (
            record.run.config.update
            if kind == "run"
            else record.config.update
            if kind == "config"
            else []
        )
        values.update({i.key: json.loads(i.value_json) for i in updates})
    return values
