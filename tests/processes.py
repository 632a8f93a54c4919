"""Process trees, for tests that kill what a launcher or a Ray node started."""
from pathlib import Path


def descendants(pid):
    """Every process under `pid`, from /proc (parent ids are field 4 of /proc/PID/stat)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
