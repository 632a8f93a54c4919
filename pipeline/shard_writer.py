"""Write one WebDataset shard: a tar of samples plus the DALI index next to it, both atomically.

Members of sample <key> (key = the sample's idx, zero-padded to 9 digits):
  <key>.jpg    baseline RGB JPEG
  <key>.cls    class index, ASCII digits (the webdataset convention)
  <key>.idx    the sample's index within its split, ASCII digits
  <key>.cls64  class index as one little-endian int64   (DALI reads it with dtypes=INT64: no text parsing)
  <key>.idx64  the idx as one little-endian int64         (likewise; names webdataset does not auto-decode)
"""
import hashlib
import os
import struct
from pathlib import Path

MEMBERS = ["jpg", "cls", "idx", "cls64", "idx64"]
INDEX_VERSION = "v1.2"  # the format DALI's wds2idx writes
BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records, as Python's tarfile and GNU tar do


def ustar_header(name, size):
    """The 512-byte USTAR header Python's tarfile writes for a regular file (mode 644, uid/gid 0, mtime 0).

    Written by hand because tarfile's generic path was a third of the builder's parent-process time
    (docs/BENCHMARKS.md, "Shard builder"); tests check the result against tarfile, GNU tar (via wds2idx), webdataset
    and DALI."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"member name too long for a USTAR header: {name!r}")
    header = (encoded.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" * 2 + b"%011o\0" % size + b"%011o\0" % 0
              + b" " * 8 + b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (64 + 16 + 167))
    checksum = sum(header)
    return header[:148] + b"%06o\0" % checksum + header[155:]


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through (one pass over the bytes)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b):
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)

    def tell(self):
        return self.size


def sample_members(idx, label, jpeg):
    return [("jpg", jpeg), ("cls", str(label).encode()), ("idx", str(idx).encode()),
            ("cls64", struct.pack("<q", label)), ("idx64", struct.pack("<q", idx))]


class ShardWriter:
    """Usage: with ShardWriter(tar_path) as w: w.add(idx, label, jpeg) ...; then w.info for the manifest."""

    def __init__(self, tar_path):
        self.tar_path = Path(tar_path)
        self.idx_path = self.tar_path.with_suffix(".idx")
        self.tmp = self.tar_path.with_name(self.tar_path.name + ".tmp")
        self._raw = open(self.tmp, "wb")
        self._out = _HashingFile(self._raw)
        self._index_lines = []
        self.num_samples = 0
        self.info = None

    def add(self, idx, label, jpeg):
        key = f"{idx:09d}"
        parts = []
        for ext, data in sample_members(idx, label, jpeg):
            name = f"{key}.{ext}"
            self._out.write(ustar_header(name, len(data)))
            parts.append(f"{ext} {self._out.size} {len(data)} {name}")  # data offset: right after its header
            self._out.write(data + b"\0" * (-len(data) % BLOCK))
        self._index_lines.append(" ".join(parts))
        self.num_samples += 1

    @property
    def bytes_written(self):
        return self._out.size

    def close(self):
        end = self._out.size + 2 * BLOCK  # two zero blocks end the archive
        self._out.write(b"\0" * (2 * BLOCK + (-end % RECORD)))
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        idx_tmp = self.idx_path.with_name(self.idx_path.name + ".tmp")
        idx_tmp.write_text(f"{INDEX_VERSION} {self.num_samples}\n" + "".join(f"{line}\n" for line in self._index_lines))
        os.replace(self.tmp, self.tar_path)  # tar first: an idx never points at a tar that is not there
        os.replace(idx_tmp, self.idx_path)
        self.info = {"tar": self.tar_path.name, "idx": self.idx_path.name, "num_samples": self.num_samples,
                     "bytes": self._out.size, "sha256": self._out.sha.hexdigest()}
        return self.info

    def abort(self):
        self._raw.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()
