"""Read an offline wandb run back from its `run-*.wandb` file, as `wandb sync` would: its
history, config, summary, artifacts, and the media files (tables, images) its history points to.

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


def _records(run_dir: Path, kind: str) -> Iterator:
    """The `kind` part of every record of that kind in the run's file."""
    (path,) = run_dir.glob("run-*.wandb")
    for record in records(path):
        if record.WhichOneof("record_type") == kind:
            yield getattr(record, kind)


def _items(items) -> dict:
    """Logged items by key; a nested key (`{"samples": table}` is logged as samples/path,
    samples/_type, ...) joined with "/"."""
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items}


def history(run_dir: Path) -> list[dict]:
    """Every logged row of the run, with its `_step`."""
    return [_items(h.item) for h in _records(run_dir, "history")]


def run_record(run_dir: Path) -> pb.RunRecord:
    """The run's first record: its project, name (`display_name`), `run_group`, `job_type`."""
    return next(_records(run_dir, "run"))


def summary(run_dir: Path) -> dict:
    """The run's summary as `wandb sync` would leave it: every update, in order."""
    values = {}
    for s in _records(run_dir, "summary"):
        values.update(_items(s.update))
    return values


def artifacts(run_dir: Path) -> list[dict]:
    """Each logged artifact: its type, name and files ({path in the artifact: {"digest", "ref",
    "size"}}; `digest` is the file's base64 MD5, `ref` the URI of a file logged by reference)."""
    return [
        {
            "type": a.type,
            "name": a.name,
            "files": {
                c.path: {"digest": c.digest, "ref": c.ref, "size": c.size}
                for c in a.manifest.contents
            },
        }
        for a in _records(run_dir, "artifact")
    ]


def media(run_dir: Path, key: str) -> tuple[str, Path]:
    """The type (`table-file`, `image-file`) and the file of the media last logged under `key`."""
    row = next(r for r in reversed(history(run_dir)) if f"{key}/path" in r)
    return row[f"{key}/_type"], run_dir / "files" / row[f"{key}/path"]


def table(run_dir: Path, key: str) -> dict:
    """A logged wandb.Table: {"columns": [...], "data": [[...], ...]}."""
    kind, path = media(run_dir, key)
    assert kind == "table-file", f"{key} is a {kind}"
    return json.loads(path.read_text())


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
