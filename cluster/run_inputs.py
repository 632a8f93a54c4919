"""What a run's net expects as input and what its outputs mean, kept in the run folder (inputs.json) so that a run
can classify images and be exported without its shards: the class list and names, the shard build's resize and
JPEG quality, and the training set's per-channel statistics.

    {"classes": [wnid, ...], "names": [str, ...] | null,
     "build": {"size": 256, "center_crop": false, "quality": 90, "resize_method": "box-down-bilinear-up"},
     "stats": {"scale": "0-255", "mean": [3], "std": [3]}}

The launcher writes it when a run starts (cluster/driver.py). A run from before the file existed falls back to the
manifest.json of its shards (config.json's data, or --data). Preprocessing.of(inputs, config) turns it and the run's
crop and normalisation into the steps an image goes through, the same as the validation loader's (pipeline/loader.py).
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import manifest as mf
from pipeline.images import RESIZE_METHOD
from pipeline.loader_options import LoaderOptions
from pipeline.stats import input_normalization

INPUTS_FILE = "inputs.json"


class RunInputsError(Exception):
    """Neither the run folder nor the shards say what the run's inputs were; the message says what to do."""


@dataclass(frozen=True)
class BuildResize:
    """How the shard builder made every image (pipeline/images.py prepare): shorter side to `size` (0: kept as it
    was), optionally the central size x size square, re-encoded as a JPEG of `quality`."""
    size: int
    center_crop: bool
    quality: int
    resize_method: str  # pipeline/images.py RESIZE_METHOD of the builder that made the shards


@dataclass(frozen=True)
class RunInputs:
    classes: list  # wnids (or the demo sets' class names), index = label
    names: list | None  # human-readable names, same order, where the source had them
    build: BuildResize
    mean: list  # the training split's per-channel mean and std, RGB, on the 0-255 scale
    std: list

    @classmethod
    def from_manifest(cls, manifest):
        b = manifest["build"]
        # every build so far used the builder's one resize; a manifest that names another would say so here
        build = BuildResize(size=b["size"], center_crop=b["center_crop"], quality=b["quality"],
                            resize_method=b.get("resize_method", RESIZE_METHOD))
        return cls(classes=list(manifest["classes"]), names=manifest.get("names"), build=build,
                   mean=list(manifest["stats"]["mean"]), std=list(manifest["stats"]["std"]))

    @classmethod
    def from_json(cls, d):
        return cls(classes=d["classes"], names=d.get("names"), build=BuildResize(**d["build"]),
                   mean=d["stats"]["mean"], std=d["stats"]["std"])

    def to_json(self):
        return {"classes": self.classes, "names": self.names, "build": asdict(self.build),
                "stats": {"scale": "0-255", "mean": self.mean, "std": self.std}}

    def label(self, i):
        """What a person reads for class i: its name, else its wnid."""
        return self.names[i] if self.names and self.names[i] else self.classes[i]

    def save(self, run_dir):
        path = Path(run_dir) / INPUTS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)


def record(run_dir, data):
    """At launch: the shards' classes, resize and statistics into the run folder."""
    RunInputs.from_manifest(mf.load(data)).save(run_dir)


def load(run_dir, data=None):
    """The run's inputs: RUN_DIR/inputs.json, else (older runs) the manifest of `data` (the shards it trained on)."""
    path = Path(run_dir) / INPUTS_FILE
    if path.is_file():
        try:
            return RunInputs.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RunInputsError(f"{path}: not a valid inputs file ({e!r}). Delete it to fall back to the "
                                 "shards' manifest.json (pass --data SHARDS).") from None
    if data is None:
        raise RunInputsError(f"{path}: not found (the run predates it), and no shards to read the classes from. "
                             "Pass --data SHARDS, the folder the run trained on.")
    try:
        return RunInputs.from_manifest(mf.load(data))
    except mf.ManifestError as e:
        raise RunInputsError(f"{path}: not found (the run predates it), and the shards cannot stand in: {e} "
                             "Pass --data SHARDS, the folder the run trained on.") from None


@dataclass(frozen=True)
class Preprocessing:
    """Every step from an image file to the net's input, as the run's validation loader took them:
    the builder's resize (and JPEG re-encode) to build.size, the loader's resize of the shorter side to
    `loader_resize` when that differs, the central loader_resize square when `central_square`, a crop x crop patch
    (the centre, or the paper's ten), then (x - mean) / std on RGB 0-255 values, NCHW float."""
    build: BuildResize
    loader_resize: int | None  # None: the shards are at the size the loader wants already
    central_square: int | None
    crop: int
    mean: list
    std: list

    @classmethod
    def of(cls, inputs, config):
        """config: the run's config.json as a dict (crop, normalize, central_square)."""
        crop = config["crop"]
        # the loader's rule: the paper's 256 for 224, scaled with the crop
        resize = LoaderOptions(crop=crop).resize_to()
        same = inputs.build.size == resize and not inputs.build.center_crop
        mean, std = input_normalization({"mean": inputs.mean, "std": inputs.std}, config["normalize"])
        return cls(build=inputs.build, loader_resize=None if same else resize,
                   central_square=resize if config.get("central_square") else None, crop=crop, mean=mean, std=std)
