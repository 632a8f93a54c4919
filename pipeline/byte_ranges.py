"""Byte ranges as files, and file checksums: what the archive reader (a class tar inside the train tar) and the
object store (a shard read with ranged GETs) share."""
import hashlib
import io


class RangeFile(io.RawIOBase):
    """A read-only, seekable file of `size` bytes whose reads come from `read_at(offset, n)` (a subclass's). Wrap it
    in io.BufferedReader where reads are small: each read_at may be a seek or a network request."""

    def __init__(self, size):
        self.size, self.pos = size, 0

    def read_at(self, offset, n):
        raise NotImplementedError

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data = self.read_at(self.pos, n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, pos, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + pos
        return self.pos

    def tell(self):
        return self.pos


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
