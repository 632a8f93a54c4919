"""Shards that change under a run: a shard rewritten, replaced or removed between epochs, or between a run and its
resume, is named with what changed, instead of a crash deep in DALI or a silent change of the data.

The check is cheap enough to run before every epoch. Local shards: one stat per file (size against the manifest,
modification time and inode against the stamp taken when the run first saw it); only a file whose stamp moved is
hashed, against the manifest's sha256, so shards copied elsewhere with their content intact pass. Shards in an s3://
store: one HEAD per object with the checksum the store computed at upload (the builder uploads each shard with its
sha256), compared with the manifest's: exact, and nothing to remember between runs.
"""
import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import object_store
from pipeline.byte_ranges import sha256_file

HEADS_IN_FLIGHT = 16


class ShardsChanged(Exception):
    """Shards differ from the build the run started with; the message names each one and says what to do."""


def _stamp(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def stamps(tars):
    """{tar: [size, mtime_ns, inode]} of local shards (missing ones left out); {} for shards in a store."""
    out = {}
    for tar in map(str, tars):
        if not object_store.is_uri(tar) and os.path.exists(tar):
            out[tar] = _stamp(tar)
    return out


def _store_problem(s3, tar, entry):
    bucket, key = object_store.parse(tar)
    from botocore.exceptions import ClientError
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return f"{tar}: removed from the store"
        raise object_store.explain(e, tar) from None
    if head["ContentLength"] != entry["bytes"]:
        return f"{tar}: {head['ContentLength']} bytes in the store, the manifest says {entry['bytes']} (replaced)"
    sha = head.get("ChecksumSHA256")
    if not sha or "-" in sha or base64.b64decode(sha).hex() != entry["sha256"]:
        return f"{tar}: its sha256 in the store differs from the manifest's (rewritten since the build)"
    return None


def _local_problem(tar, entry, before):
    if not os.path.exists(tar):
        return f"{tar}: removed"
    now = _stamp(tar)
    if now[0] != entry["bytes"]:
        return f"{tar}: {now[0]} bytes, the manifest says {entry['bytes']} (rewritten or truncated)"
    if before is not None and now != before:
        if sha256_file(Path(tar)) != entry["sha256"]:
            return f"{tar}: rewritten with other content of the same size (its sha256 differs from the manifest's)"
        before[:] = now  # the same bytes under a new stamp (a copy, a touch): hashed once, not at every epoch
    return None


def problems(tars, entries, before):
    """Messages for the shards that differ from the manifest's entries; before: stamps() from the run's start (a
    shard found intact under a new stamp gets that stamp there)."""
    tars = list(map(str, tars))
    remote = [i for i, t in enumerate(tars) if object_store.is_uri(t)]
    found = [_local_problem(t, e, before.get(t)) for t, e in zip(tars, entries) if not object_store.is_uri(t)]
    if remote:
        s3 = object_store.client()
        with ThreadPoolExecutor(HEADS_IN_FLIGHT) as pool:
            found += pool.map(lambda i: _store_problem(s3, tars[i], entries[i]), remote)
    return [p for p in found if p]


def check(tars, entries, before, when):
    """Raise ShardsChanged naming every changed shard; when: the moment, in words ("before epoch 3")."""
    found = problems(tars, entries, before)
    if found:
        shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
        raise ShardsChanged(f"{len(found)} shard(s) changed {when}: {shown}. The run's data must stay as built: "
                            "restore the shards (or rebuild them, with their manifest, and start a new run).")


def _build_files(data_dir):
    from pipeline import manifest as mf
    m = mf.load(data_dir)
    files = [f for split in m["splits"] if m["splits"][split]["shards"] for f in mf.split_files(data_dir, m, split)]
    return [str(t) for t, _, _ in files], [e for _, _, e in files]


def check_build(data_dir, before, when):
    """check() over every split of a build."""
    tars, entries = _build_files(data_dir)
    check(tars, entries, before, when)


def record(path, data_dir):
    """Write the stamps of every shard of a build to path (a run folder's file), for the check at --resume."""
    Path(path).write_text(json.dumps(stamps(_build_files(data_dir)[0])))


def recorded(path):
    """The stamps record() wrote, or {} where there are none (a run from before the check: size checks only)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
