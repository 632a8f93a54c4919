"""manifest.json: the declared schema of a shard build, and the checks that a build on disk matches it.

{
  "format": "alexnet-webdataset", "version": 1, "complete": true,
  "classes": [wnid, ...], "names": [str, ...] | null,
  "members": {"jpg": ..., "cls": ..., ...}                  what each tar member holds (shard_writer.MEMBERS)
  "splits": {"train": {"num_samples": N, "shards": [{"tar", "idx", "num_samples", "bytes", "sha256", "inputs",
                                                      "upscaled"}]},
             "val": {...}},                                 inputs = [first, end) positions in the shuffled input list
                                                            upscaled = {"images", "max_factor"} enlarged to --size
  "skipped": [{"split", "path", "reason"}],
  "upscaled": {"size": --size, "train": {"images": N, "max_factor": F}, "val": {...}}   the shards' counts summed
  "stats": {"scale": "0-255", "mean": [3], "std": [3], "eigval": [3], "eigvec": [[3]x3] (columns)},
  "build": {build settings, "versions": {...}}
}
An unfinished build has "complete": false and a "progress" entry that --resume continues from.
"""
import json
import os
import tarfile
from pathlib import Path

from pipeline import object_store
from pipeline.byte_ranges import sha256_file
from pipeline.shard_writer import INDEX_VERSION

FORMAT = "alexnet-webdataset"
VERSION = 1
MEMBER_DOCS = {
    "jpg": "baseline 8-bit RGB JPEG",
    "cls": "class index, ASCII digits",
    "idx": "sample index within its split, ASCII digits",
    "cls64": "class index, little-endian int64",
    "idx64": "sample index within its split, little-endian int64",
}


class ManifestError(Exception):
    """The shards on disk cannot be used; the message names the file and what to do."""


def manifest_path(data_dir):
    return Path(data_dir) / "manifest.json"


def write(data_dir, manifest):
    path = manifest_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def local_dir(data_dir):
    """The folder holding data_dir's manifest.json and .idx files: data_dir itself, or for an s3:// URI a local
    cache of them (the tars stay in the store)."""
    if not object_store.is_uri(data_dir):
        return data_dir
    try:
        return object_store.local_copy(data_dir)
    except object_store.ObjectStoreError as e:
        raise ManifestError(str(e)) from None


def load(data_dir, *, require_complete=True):
    path = manifest_path(local_dir(data_dir))
    if not path.is_file():
        raise ManifestError(f"{path}: not found. Build shards first: python pipeline/build_shards.py --out {data_dir}")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}). Rebuild the shards.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise ManifestError(f"{path}: not a manifest of this project (format {found!r}, "
                            f"expected {FORMAT!r}).")
    if m.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {m.get('version')!r}; this code reads version {VERSION}. "
                            "Rebuild the shards with this version of pipeline/build_shards.py.")
    if require_complete and not m.get("complete"):
        raise ManifestError(f"{path}: the build was not finished. Continue it with "
                            f"python pipeline/build_shards.py --resume --out {data_dir} (and the same settings).")
    return m


def split_files(data_dir, manifest, split):
    """[(tar path, idx path, shard entry)] of one split; a clear error for an unknown or empty split."""
    splits = manifest["splits"]
    if split not in splits or not splits[split]["shards"]:
        have = [s for s in splits if splits[s]["shards"]]
        raise ManifestError(f"{manifest_path(data_dir)}: no shards for split {split!r} (have: {', '.join(have)}).")
    d = Path(local_dir(data_dir)) / split
    if object_store.is_uri(data_dir):  # tars are read from the store, as strings: a Path would fold "s3://"
        return [(f"{data_dir.rstrip('/')}/{split}/{s['tar']}", d / s["idx"], s) for s in splits[split]["shards"]]
    return [(d / s["tar"], d / s["idx"], s) for s in splits[split]["shards"]]


def open_shard(tar):
    """A shard from split_files as a binary file: from disk, or from the store for an s3:// one."""
    if object_store.is_uri(tar):
        try:
            return object_store.open_read(tar)
        except object_store.ObjectStoreError as e:
            raise ManifestError(str(e)) from None
    return open(tar, "rb")


def check_shard(tar, idx, entry, *, deep=False):
    """Problems with one shard as a list of messages (empty: fine). deep=True also hashes and walks the tar."""
    problems = []
    if object_store.is_uri(tar):  # checked against the manifest at upload, and by build_shards.py --verify --out URI
        tar = None
    for path in (tar, idx) if tar is not None else (idx,):
        if not path.is_file():
            problems.append(f"{path}: missing. Rebuild, or restore it from where the shards came from.")
    if problems or tar is None:
        return problems
    size = tar.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{tar}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced).")
        return problems
    head = idx.read_text().split("\n", 1)[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or head[1] != str(entry["num_samples"]):
        problems.append(f"{idx}: header {' '.join(head)!r}, expected '{INDEX_VERSION} {entry['num_samples']}'.")
    if deep:
        if sha256_file(tar) != entry["sha256"]:
            problems.append(f"{tar}: sha256 differs from the manifest (corrupted).")
        else:
            try:
                with tarfile.open(tar) as t:
                    n = sum(1 for m in t if m.name.endswith(".jpg"))
                if n != entry["num_samples"]:
                    problems.append(f"{tar}: {n} samples, the manifest says {entry['num_samples']}.")
            except tarfile.TarError as e:
                problems.append(f"{tar}: unreadable tar ({e}).")
    return problems


def verify(data_dir, *, deep=True, splits=None):
    """Every problem with a finished build, as messages; [] when the shards match the manifest."""
    m = load(data_dir)
    problems = []
    for split in splits or m["splits"]:
        if not m["splits"][split]["shards"]:
            continue
        for tar, idx, entry in split_files(data_dir, m, split):
            problems += check_shard(tar, idx, entry, deep=deep)
    return problems
