"""What a loader produces, declared once: the view (which crops of an image) and every other option, one name each.

    View.TRAINING     a random crop (or a random-resized crop), flipped with p=0.5, PCA lighting noise
    View.CENTRE       the centre crop
    View.TEN_PATCHES  the paper's ten test patches: four corners and the centre, each also flipped

make_loader's keywords are LoaderOptions' fields plus `train` and `ten_crop`, which name the view.
"""
import dataclasses
import enum
from dataclasses import dataclass

SHUFFLE_BUFFER = 16384  # samples; see pipeline/loader.py's docstring for the choice and its memory
DTYPES = ("float32", "float16", "bfloat16")
HANDOFFS = ("stream", "host")  # pipeline/handoff.py
# The paper's ten test patches: these five places (x, y as fractions of the room left around the crop), each also
# flipped. Here, not in dali_pipeline.py, so that code without DALI (cluster/preprocess.py) uses the same list.
TEN_CROP_POSITIONS = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]  # corners, then centre


def resized_shorter(width, height, shorter):
    """(width, height) after DALI's resize_shorter to `shorter`: the longer side scaled and rounded half up (Python's
    round() goes half to even: 341x256 to 128 gives 171 in DALI, 170 with round)."""
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, max(shorter, int(height * scale + 0.5))
    return max(shorter, int(width * scale + 0.5)), shorter


class View(enum.Enum):
    TRAINING = "training"
    CENTRE = "centre"
    TEN_PATCHES = "ten_patches"

    @classmethod
    def of(cls, train, ten_crop=False):
        """The view make_loader's (train, ten_crop) name; ten_crop only matters for evaluation."""
        if train:
            return cls.TRAINING
        return cls.TEN_PATCHES if ten_crop else cls.CENTRE


@dataclass(frozen=True)
class LoaderOptions:
    """How a loader decodes and augments, and how hard it works. Where it reads (shards, split, rank) and where it
    puts the batch (device) are DaliLoader's own arguments."""
    crop: int = 224  # the square the network sees
    resize: int | None = None  # shorter side before cropping (None: crop * 256 / 224, the paper's 256 for 224)
    central_square: bool = False  # crops from the central resize x resize square (the paper), not the whole image
    random_resized_crop: bool = False  # Inception-style crops instead of the paper's (training only)
    crop_flip: bool = True  # False: training takes the centre crop, never flipped (the "no augmentation" ablation)
    lighting: float = 0.1  # std of the PCA lighting noise's alpha (0: none); training only
    normalize: str = "paper"  # pipeline/stats.py: "paper" subtracts the mean, "std" also divides by the std
    dtype: str = "float32"  # the images' dtype
    channels_last: bool = False  # NCHW tensors with NHWC memory (what the GPU model wants), without a copy
    seed: int = 0  # order and augmentation are a pure function of (seed, epoch, rank, world)
    num_threads: int | None = None  # DALI's CPU threads (None: every core on CPU, half of them up to 8 with a GPU)
    initial_fill: int = SHUFFLE_BUFFER  # shuffle buffer, samples (capped by the rank's share)
    prefetch: int = 2  # batches DALI prepares ahead (prefetch_queue_depth); docs/BENCHMARKS.md has the measurement
    handoff: str = "stream"  # GPU batches: "stream" ordered on torch's stream; "host" waits per batch (DALI's default)
    hw_decoder_load: float = 0.65  # share of the JPEGs the GPU's hardware decoder takes (mixed decode only)
    roi_decode: bool = True  # training on shards at scale: decode only the crop window
    preallocate: int | None = None  # mixed decoder's size hint in pixels (None: 2 x crop; 0: none)
    verify: bool = False  # hash every shard against the manifest before reading (slow; sizes are always checked)

    @classmethod
    def from_keywords(cls, keywords):
        """LoaderOptions from make_loader's keywords, naming any it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"make_loader: unknown option(s) {unknown}; the options are {sorted(known)} "
                            "(pipeline/loader_options.py), plus train, ten_crop, shard_id, num_shards, device, "
                            "device_id and epoch")
        return cls(**keywords)

    def check(self, view):
        """Raise ValueError naming the option when these options cannot make `view`."""
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.crop < 1:
            raise ValueError(f"crop must be >= 1 pixel, got {self.crop}")
        if self.resize is not None and self.resize < self.crop:
            raise ValueError(f"resize {self.resize} is smaller than crop {self.crop}")
        if self.initial_fill < 1:
            raise ValueError(f"initial_fill (the shuffle buffer) must be >= 1 sample, got {self.initial_fill}")
        if self.handoff not in HANDOFFS:
            raise ValueError(f"handoff must be one of {', '.join(HANDOFFS)}, got {self.handoff!r}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch (batches prepared ahead) must be >= 1, got {self.prefetch}")
        if self.random_resized_crop and not self.crop_flip:
            raise ValueError("random_resized_crop=True is a random crop: it cannot be combined with crop_flip=False")
        if self.random_resized_crop and self.central_square:
            raise ValueError("random_resized_crop=True crops anywhere in the image: it cannot be combined with "
                             "central_square=True")

    def resize_to(self):
        """The shorter side the crops are taken at."""
        return self.resize if self.resize is not None else round(self.crop * 256 / 224)
