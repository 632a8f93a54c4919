"""Where the inputs of a build come from: an ImageNet-style tree on disk, or the embedded demo set.

An input is (name, label): name is a file path, or "demo:<split>/<wnid>/<n>" for a generated demo image. Class
index = position of the wnid in the sorted list of train class folders (torchvision's convention)."""
import csv
from pathlib import Path

from pipeline import demo_data, shapes_data


class SourceError(Exception):
    """The source tree cannot be used as given; the message says what is wrong and what to do."""


KAGGLE_TREE = Path("ILSVRC/Data/CLS-LOC")  # under the root of Kaggle's ImageNet download


def _files(folder):
    # Every non-hidden regular file is an input: a non-image in a class folder is reported as skipped, not ignored.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def train_classes(src):
    train = src / "train"
    if not train.is_dir():
        raise SourceError(f"--src {src}: no train/ folder. Expected SRC/train/<wnid>/*.JPEG (ImageNet layout), "
                          "Kaggle's download (SRC/ILSVRC/Data/CLS-LOC/train) or the official archives "
                          "(SRC/ILSVRC2012_img_train.tar, ..._img_val.tar, ..._devkit_t12.tar.gz).")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SourceError(f"--src {src}: train/ holds no class folders. Expected SRC/train/<wnid>/*.JPEG.")
    empty = [c for c in classes if not _files(train / c)]
    if empty:
        raise SourceError(f"--src {src}: class folder(s) with no images: {', '.join(f'train/{c}' for c in empty[:5])}"
                          f"{' ...' if len(empty) > 5 else ''}. Add images or remove the folder(s).")
    return classes


def read_val_labels(path):
    """{file stem: (wnid, line number)} from Kaggle's LOC_val_solution.csv or from plain 'filename wnid' lines; the
    line number names the row in messages."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"--val-labels {path}: file not found.")
    labels = {}
    with open(path, newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.startswith("ImageId"):
            for n, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                labels[Path(row["ImageId"]).stem] = (row["PredictionString"].split()[0], n)
        else:
            for n, line in enumerate(f, 1):
                parts = line.replace(",", " ").split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise SourceError(f"--val-labels {path}, line {n}: expected 'filename wnid', got {line.strip()!r}")
                labels[Path(parts[0]).stem] = (parts[1], n)
    return labels


def val_inputs(src, classes, val_labels=None, labels_dir=None):
    """labels_dir: where LOC_val_solution.csv is looked for (default: src)."""
    val = src / "val"
    if not val.is_dir():
        return []
    index = {c: i for i, c in enumerate(classes)}
    folders = sorted(p for p in val.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders:  # val/<wnid>/*
        unknown = [p.name for p in folders if p.name not in index]
        if unknown:
            raise SourceError(f"val/ has class folders that are not in train/: {', '.join(unknown[:5])}. "
                              "Class indices come from train/, so every val class must exist there.")
        return [(str(f), index[p.name]) for p in folders for f in _files(p)]
    files = _files(val)
    if not files:
        return []
    if val_labels is None:
        default = (labels_dir or src) / "LOC_val_solution.csv"
        if not default.is_file():
            raise SourceError(f"--src {src}: val/ holds {len(files)} files but no labels. Pass --val-labels FILE "
                              "(Kaggle LOC_val_solution.csv or 'filename wnid' lines) or put LOC_val_solution.csv "
                              "in SRC.")
        val_labels = default
    labels = read_val_labels(val_labels)
    missing = [f.name for f in files if f.stem not in labels]
    if missing:
        raise SourceError(f"{len(missing)} val file(s) have no label in {val_labels}: {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}. Fix the labels file or remove the files.")
    bad = sorted((labels[f.stem][1], labels[f.stem][0], f.name) for f in files if labels[f.stem][0] not in index)
    if bad:
        rows = "; ".join(f"line {n}: {wnid} (val/{name})" for n, wnid, name in bad[:5])
        more = f" and {len(bad) - 5} more row(s)" if len(bad) > 5 else ""
        raise SourceError(f"{val_labels} labels {len(bad)} image(s) with a class that is not a folder of train/: "
                          f"{rows}{more}. Class indices come from train/: fix those rows, add the class to train/, "
                          "or remove the images from val/.")
    return [(str(f), index[labels[f.stem][0]]) for f in files]


def class_names(src, classes):
    """Human-readable names from LOC_synset_mapping.txt ('n01440764 tench, Tinca tinca') where it exists."""
    mapping = src / "LOC_synset_mapping.txt"
    if not mapping.is_file():
        return None
    names = dict(line.strip().split(" ", 1) for line in mapping.read_text().splitlines() if " " in line.strip())
    return [names.get(c, c) for c in classes]


def imagenet(src, val_labels=None):
    """{"classes", "names", "splits": {"train": [...], "val": [...]}} for an ImageNet-style tree, or for Kaggle's
    download from its root (SRC/ILSVRC/Data/CLS-LOC/{train,val}, with the csv and synset mapping in SRC)."""
    src = Path(src)
    if not src.is_dir():
        raise SourceError(f"--src {src}: not a readable folder.")
    tree = src / KAGGLE_TREE if not (src / "train").is_dir() and (src / KAGGLE_TREE / "train").is_dir() else src
    try:
        classes = train_classes(tree)
        train = [(str(f), i) for i, c in enumerate(classes) for f in _files(tree / "train" / c)]
        val = val_inputs(tree, classes, val_labels, labels_dir=src)
    except PermissionError as e:
        raise SourceError(f"--src {src}: cannot read {e.filename}: permission denied.") from None
    return {"classes": classes, "names": class_names(src, classes), "splits": {"train": train, "val": val}}


# The embedded sets: "colours" (the demo set, solvable from mean colour) and "shapes" (the ablation set, where the
# class is an object's shape). Each: (classes, names, inputs(split, per_class)).
DEMO_SETS = {
    "colours": (demo_data.DEMO_CLASSES, demo_data.DEMO_NAMES, demo_data.demo_inputs),
    "shapes": (shapes_data.SHAPES_CLASSES, shapes_data.SHAPES_NAMES, shapes_data.shapes_inputs),
}


def demo(train_per_class, val_per_class, demo_set="colours"):
    if demo_set not in DEMO_SETS:
        raise SourceError(f"--demo-set {demo_set!r}: choose one of {', '.join(DEMO_SETS)}.")
    classes, names, inputs = DEMO_SETS[demo_set]
    return {"classes": list(classes), "names": list(names),
            "splits": {"train": inputs("train", train_per_class), "val": inputs("val", val_per_class)}}


def read_input(name, label, num_classes, seed):
    """The raw bytes of one input (generated for the embedded sets' inputs)."""
    if name.startswith("demo:"):
        split, _, number = name[len("demo:"):].split("/")
        return demo_data.demo_jpeg(split, int(number), label, num_classes, seed)
    if name.startswith(shapes_data.PREFIX):
        split, _, number = name[len(shapes_data.PREFIX):].split("/")
        return shapes_data.shapes_jpeg(split, int(number), label, seed)
    with open(name, "rb") as f:
        return f.read()
