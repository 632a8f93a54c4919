"""ImageNet's official archives as build inputs, read in place: nothing is extracted to disk.

- ILSVRC2012_img_train.tar: a tar of 1,000 class tars <wnid>.tar of JPEGs. The outer tar's headers are listed once,
  then each class tar's headers (in parallel over the builder's processes); every image becomes an input that names
  its absolute byte range in the outer file, so a worker reads just those bytes (memory: one image per worker).
- ILSVRC2012_img_val.tar: 50,000 JPEGs, flat. Labels come from the devkit: data/ILSVRC2012_validation_ground_truth.txt
  holds one ILSVRC2012_ID per line, in the order of the validation file numbers, and data/meta.mat's `synsets` maps
  ILSVRC2012_ID to WNID and words (the 1,000 classes are its entries with num_children 0).
- The class index is the sorted-wnid order of the class tars, and images are listed in the order of their names:
  the inputs are those of the same images extracted, so the shards come out byte for byte the same.
"""
import io
import re
import tarfile
from pathlib import Path

from pipeline.byte_ranges import RangeFile
from pipeline.sources import SourceError

TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
PREFIX = "tar:"  # input name: tar:<offset>:<size>:<archive path>//<name inside>
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"


def find(src):
    """{"train_tar", "val_tar", "devkit"}: the official archives in folder src (those present), or {} if none."""
    src = Path(src)
    found = {key: src / name for key, name in (("train_tar", TRAIN_TAR), ("val_tar", VAL_TAR), ("devkit", DEVKIT))}
    return {k: p for k, p in found.items() if p.is_file()}


def is_member(name):
    return name.startswith(PREFIX)


def _member(path, offset, size, inner):
    return f"{PREFIX}{offset}:{size}:{path}//{inner}"


def _parse(name):
    offset, size, rest = name[len(PREFIX):].split(":", 2)
    path, inner = rest.split("//", 1)  # the archive path is resolved: it holds no "//"
    return path, int(offset), int(size), inner


def display(name):
    """What the manifest and messages show: ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG."""
    path, _, _, inner = _parse(name)
    return f"{Path(path).name}/{inner}"


def read_member(name):
    path, offset, size, _ = _parse(name)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{display(name)}: the archive ends inside this image (truncated download?)")
    return data


class _Window(RangeFile):
    """Bytes [start, start + size) of an open file, as a file of its own: a class tar inside the train tar."""

    def __init__(self, f, start, size):
        super().__init__(size)
        self.f, self.start = f, start

    def read_at(self, offset, n):
        self.f.seek(self.start + offset)
        return self.f.read(n)


def _files(fileobj, size, where):
    """[(name, offset of its data, size)] of the regular files in a tar, sorted by name; and the problems found
    (truncation, corruption) as {"path", "reason"}: what can be read of a damaged tar is kept, the rest reported."""
    files, problems = [], []
    fileobj.seek(0)  # tarfile starts where the file is; member offsets are from the file's start
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as t:
            for m in t:
                if not m.isfile() or Path(m.name).name.startswith("."):
                    continue
                if m.offset_data + m.size > size:
                    problems.append({"path": f"{where}/{m.name}", "reason": "cut off by the end of the tar"})
                    break
                files.append((m.name, m.offset_data, m.size))
    except tarfile.TarError as e:
        problems.append({"path": where, "reason": f"unreadable after {len(files)} images ({e}): truncated or corrupt"})
    return sorted(files), problems


def list_class_tar(task):
    """In a worker process: one class tar of the train tar -> (wnid, [input name], problems)."""
    path, offset, size, name = task
    with open(path, "rb") as f:
        files, problems = _files(_Window(f, offset, size), size, f"{Path(path).name}/{name}")
    return Path(name).stem, [_member(path, offset + o, n, f"{name}/{inner}") for inner, o, n in files], problems


def train_inputs(train_tar, pool, progress):
    """(classes, {wnid: [input name]}, problems) of the train tar."""
    path = str(Path(train_tar).resolve())
    try:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            outer, problems = _files(f, size, Path(path).name)
    except OSError as e:
        raise SourceError(f"--train-tar {train_tar}: cannot read it ({e.strerror or e}).") from None
    tasks, other = [], []
    for name, offset, n in outer:
        (tasks if name.endswith(".tar") and "/" not in name else other).append((path, offset, n, name))
    problems += [{"path": f"{Path(path).name}/{t[3]}", "reason": "not a class tar <wnid>.tar"} for t in other]
    if not tasks:
        raise SourceError(f"--train-tar {train_tar}: holds no class tars <wnid>.tar. Expected ImageNet's "
                          f"{TRAIN_TAR} (a tar of 1,000 per-class tars).")
    per_class = {}
    for wnid, names, found in progress(pool.imap(list_class_tar, tasks) if pool else map(list_class_tar, tasks),
                                       total=len(tasks), desc=f"listing {Path(path).name}", unit="class"):
        per_class[wnid], problems = names, problems + found
    empty = sorted(w for w, names in per_class.items() if not names)
    if empty:
        raise SourceError(f"--train-tar {train_tar}: class tar(s) with no readable images: "
                          f"{', '.join(f'{w}.tar' for w in empty[:5])}. Download the archive again.")
    return sorted(per_class), per_class, problems


def read_devkit(devkit):
    """([wnid of validation image 1, 2, ...], {wnid: words} of the leaf synsets) from the devkit tar.gz."""
    try:
        import scipy.io
    except ImportError:
        raise SourceError("reading the devkit's meta.mat needs scipy: pip install scipy "
                          "(or pip install -e '.[imagenet]').") from None
    try:
        with tarfile.open(devkit, "r:gz") as t:
            found = {}
            for m in t:
                for key in (GROUND_TRUTH, META):
                    if m.isfile() and m.name.endswith(key):
                        found[key] = t.extractfile(m).read()
    except (OSError, tarfile.TarError) as e:
        raise SourceError(f"--devkit {devkit}: cannot read it as a .tar.gz ({e}). Expected {DEVKIT}.") from None
    missing = [k for k in (GROUND_TRUTH, META) if k not in found]
    if missing:
        raise SourceError(f"--devkit {devkit}: no {' or '.join(missing)} inside. Expected ImageNet's {DEVKIT}.")
    synsets = scipy.io.loadmat(io.BytesIO(found[META]), squeeze_me=True)["synsets"]
    ids = [int(i) for i in synsets["ILSVRC2012_ID"]]
    wnids, words = [str(w) for w in synsets["WNID"]], [str(w) for w in synsets["words"]]
    leaf = [int(c) == 0 for c in synsets["num_children"]]
    id_to_wnid = dict(zip(ids, wnids))
    truth = [int(line) for line in found[GROUND_TRUTH].decode().split()]
    bad = sorted({i for i in truth if i not in id_to_wnid})
    if bad:
        raise SourceError(f"--devkit {devkit}: the ground truth names ILSVRC2012_IDs {bad[:5]} that meta.mat lacks.")
    return [id_to_wnid[i] for i in truth], {w: t for w, t, is_leaf in zip(wnids, words, leaf) if is_leaf}


def val_inputs(val_tar, labels, index):
    """[(input name, class index)] of the flat val tar, labelled by validation file number."""
    path = str(Path(val_tar).resolve())
    try:
        with open(path, "rb") as f:
            files, problems = _files(f, f.seek(0, io.SEEK_END), Path(path).name)
    except OSError as e:
        raise SourceError(f"--val-tar {val_tar}: cannot read it ({e.strerror or e}).") from None
    inputs = []
    for name, offset, size in files:
        m = re.search(r"_(\d+)\.[^.]*$", name)
        number = int(m.group(1)) if m else 0
        if not 1 <= number <= len(labels):
            raise SourceError(f"--val-tar {val_tar}: {name} has no label in the devkit's ground truth (it has "
                              f"{len(labels)} lines). Expected ILSVRC2012_val_<number>.JPEG with the matching devkit.")
        if labels[number - 1] not in index:
            raise SourceError(f"--val-tar {val_tar}: {name} is labelled {labels[number - 1]}, which is not a class "
                              "tar of the train tar.")
        inputs.append((_member(path, offset, size, name), index[labels[number - 1]]))
    return inputs, problems


def imagenet(train_tar, val_tar=None, devkit=None, *, pool=None, progress=None):
    """{"classes", "names", "splits", "problems"} from the archives, like sources.imagenet for a tree."""
    progress = progress or (lambda it, **_: it)
    if val_tar and not devkit:
        raise SourceError(f"--val-tar {val_tar}: its labels come from the devkit; pass --devkit {DEVKIT}.")
    classes, per_class, problems = train_inputs(train_tar, pool, progress)
    problems = [{"split": "train", **p} for p in problems]
    train = [(name, i) for i, c in enumerate(classes) for name in per_class[c]]
    names, val = None, []
    if devkit:
        labels, words = read_devkit(devkit)
        if set(classes) != set(words):
            extra, lacking = sorted(set(classes) - set(words)), sorted(set(words) - set(classes))
            raise SourceError(f"the class tars of {train_tar} and the leaf synsets of {devkit}'s meta.mat differ: "
                              f"{len(extra)} only in the tar ({', '.join(extra[:3])}), {len(lacking)} only in "
                              f"meta.mat ({', '.join(lacking[:3])}). Use the devkit of the same release.")
        names = [words[c] for c in classes]
        if val_tar:
            val, found = val_inputs(val_tar, labels, {c: i for i, c in enumerate(classes)})
            problems += [{"split": "val", **p} for p in found]
    return {"classes": classes, "names": names, "splits": {"train": train, "val": val}, "problems": problems}
