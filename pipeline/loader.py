"""DALI loaders for training and evaluation: one pipeline definition, decoded on the GPU ("mixed") or the CPU.

    loader = make_loader("data/shards", "train", 128, shard_id=rank, num_shards=world, device="cuda", device_id=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)                  # a new, seed-determined order and augmentation every epoch
        for images, labels, indices in loader:   # images float NCHW normalised; labels, indices int64
            ...

Training is the paper's: a random crop x crop of the image scaled to `resize` on its shorter side (256 for 224),
taken from its central resize x resize square with central_square=True (the paper's "cropped out the central 256x256
patch"; False: from the whole image), a horizontal flip with p=0.5, PCA lighting noise (below), then the declared
input normalisation (pipeline/stats.py: "paper" subtracts the per-channel mean on the 0-255 scale, "std" also divides
by the std); crop_flip=False trains on the centre crop, never flipped (the ablation's "no augmentation"; lighting has
its own switch). Evaluation: the centre crop, or the paper's ten patches (four corners and the centre of the central
square or of the whole image, each also flipped) as (N, 10, 3, crop, crop).

Training order (pipeline/epoch_order.py): epoch e permutes the shard files by (seed, e) on every rank, rank r of
`num_shards` reads its stretch of that order through a shuffle buffer, augmentation is seeded by (seed, e, r). What
a rank yields is a pure function of (seed, epoch, rank, num_shards): a jump to epoch k (set_epoch, as on a resume,
also at another world size) yields exactly what an uninterrupted loader of that size yields at epoch k. Every rank
yields (N // num_shards) // batch_size full batches, so data-parallel ranks step together; each epoch reads every
sample at most once across ranks, all but fewer than one batch per rank.

Shuffle buffer (`initial_fill`): 16384 samples by default, capped by the rank's share; how often batch-mates meet
again: epoch_order.py. Host memory: about the buffer x the mean JPEG size per pipeline (docs/BENCHMARKS.md, "Loader:
a new order every epoch"), in the page cache when DALI can memory-map the tars (local files), in process memory when
it cannot (network file systems). Two pipelines are alive while the next epoch is prepared (below): budget twice that.

A pipeline per epoch, its reader over that epoch's stretch only (DALI 2.4's `shuffle_after_epoch` permutes files in
one long-lived pipeline, but its buffer and random state carry over epochs: a resume could not reproduce an epoch).
The next one is built in a background thread from the current epoch's second batch on, first batch included: there
the reader parses its index and fills its buffer in DALI's threads (lazy_init), as a parse inside build() would
hold the GIL and stall training. Per epoch, build() and dropping the old pipeline at the hand-over (at once, for its
GPU memory) still hold the GIL (their cost per epoch is in docs/BENCHMARKS.md, same section). `epoch_timings`
records them and the wait per epoch. A jump to another epoch builds synchronously.

Views and options: the view (training, centre, ten patches) and LoaderOptions, one name per option, are declared in
pipeline/loader_options.py; make_loader's `train`/`ten_crop` name the view, its other keywords are the options. The
DALI graph is pipeline/dali_pipeline.py. On a GPU the batch (images and labels) is ordered on torch's current stream
without a host wait per batch (pipeline/handoff.py); `prefetch` batches are prepared ahead.

Evaluation: each of `num_shards` loaders reads its own fixed contiguous part of the split (DALI's reader split by
sample count), padded to whole batches with the padding trimmed, so all loaders together see every sample exactly
once; its pipeline lives for the loader's lifetime.
"""
import contextlib
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipeline import epoch_order, shard_watch
from pipeline import manifest as mf
from pipeline.dali_pipeline import PipelineSpec, dali_pipeline
from pipeline.epoch_order import shard_range
from pipeline.handoff import StreamOrderedIterator
from pipeline.loader_options import SHUFFLE_BUFFER, LoaderOptions, View  # noqa: F401 (SHUFFLE_BUFFER: re-exported)
from pipeline.stats import input_normalization

OUTPUTS = ["images", "labels", "indices"]


@dataclass
class EpochTiming:
    """How one training epoch's pipeline came and went, in seconds. build_s: defining and building it (DALI's
    build holds the GIL); first_batch_s: its first batch (index parse and buffer fill, in DALI's threads);
    wait_s: what the consumer waited for it at the hand-over (about 0 when prepared in the background in time);
    drop_s: dropping it after the epoch (DALI frees it under the GIL)."""
    epoch: int
    prepared: bool
    build_s: float
    first_batch_s: float
    wait_s: float = 0.0
    drop_s: float = 0.0


@dataclass
class _EpochPipeline:
    iterator: DALIGenericIterator
    timing: EpochTiming


class DaliLoader:
    """Iterable of (images, labels, indices) batches for one worker's shard; see the module docstring."""

    def __init__(self, data_dir, split, batch_size, *, view=View.TRAINING, options=LoaderOptions(), shard_id=0,
                 num_shards=1, device="cpu", device_id=None, epoch=0):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} is not in [0, num_shards={num_shards})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options.check(view)
        self.manifest = mf.load(data_dir)
        files = mf.split_files(data_dir, self.manifest, split)
        problems = [p for tar, idx, entry in files for p in mf.check_shard(tar, idx, entry, deep=options.verify)]
        if problems:
            raise mf.ManifestError("; ".join(problems))
        self.tars = [str(t) for t, _, _ in files]
        self.idxs = [str(i) for _, i, _ in files]
        self.counts = [entry["num_samples"] for _, _, entry in files]
        self.entries, self.stamps = [entry for _, _, entry in files], shard_watch.stamps(self.tars)
        self.num_samples = self.manifest["splits"][split]["num_samples"]
        start, end = shard_range(self.num_samples, shard_id, num_shards)
        self.shard_samples = end - start
        self.train = view is View.TRAINING
        if self.train and self.num_samples // num_shards < batch_size:
            raise ValueError(f"{data_dir} {split}: {self.num_samples // num_shards} samples per shard "
                             f"({self.num_samples} over {num_shards} shards) is fewer than one batch of {batch_size}. "
                             "Use a smaller batch size or fewer workers.")
        self.split, self.batch_size, self.view, self.options = split, batch_size, view, options
        self.shard_id, self.num_shards = shard_id, num_shards
        self.device, self.dtype, self.seed, self.epoch = device, options.dtype, options.seed, epoch
        self.mean, self.std = input_normalization(self.manifest["stats"], options.normalize)  # (x - mean) / std
        if device_id is None and device == "cuda":
            device_id = torch.cuda.current_device()
        self.device_id = device_id
        cpus = os.cpu_count() or 1
        # With mixed decode, 8 threads beat 16 on a 16-core H100 machine (docs/BENCHMARKS.md, "Loader"): the HW
        # decoder, the reader and Python need cores of their own. On CPU every core decodes.
        self.num_threads = options.num_threads or (max(1, min(8, cpus // 2)) if device == "cuda" else min(8, cpus))
        self.spec = self._spec(view, options, device)
        # "host": DALI's own iterator, which waits on the host for each GPU batch (kept to measure the difference)
        self._iterator_class = StreamOrderedIterator if options.handoff == "stream" else DALIGenericIterator
        self.epoch_timings = []  # EpochTiming per training epoch started
        self._eval_iter = None  # evaluation: one pipeline for the loader's lifetime
        self._prepared = None  # training: (epoch, Future of _EpochPipeline) being built in the background
        self._pool = None

    def _spec(self, view, options, device):
        """The pipeline's resolved settings: the options, read against the shards' manifest."""
        build, stats = self.manifest["build"], self.manifest["stats"]
        resize = options.resize_to()
        return PipelineSpec(
            view=view, mixed=device == "cuda", crop=options.crop,
            # shards built at this size already have it on the shorter side: skip a resize that changes nothing
            resize=None if (build["size"] == resize and not build["center_crop"]) else resize,
            square=resize if options.central_square else None, random_resized_crop=options.random_resized_crop,
            roi_decode=options.roi_decode, crop_flip=options.crop_flip, lighting=options.lighting,
            mean=tuple(self.mean), std=tuple(self.std), eigvec=tuple(map(tuple, stats["eigvec"])),
            eigval=tuple(stats["eigval"]), half=options.dtype == "float16", hwc=options.channels_last,
            initial_fill=min(options.initial_fill, max(1, self.shard_samples)),
            hw_decoder_load=options.hw_decoder_load,
            preallocate=2 * options.crop if options.preallocate is None else options.preallocate)

    def __len__(self):
        if self.train:  # identical on every shard: data-parallel ranks must take the same number of steps
            return (self.num_samples // self.num_shards) // self.batch_size
        return math.ceil(self.shard_samples / self.batch_size)

    def set_epoch(self, epoch):
        """The epoch the next iteration produces; see the module docstring for how order depends on it."""
        self.epoch = epoch

    def _outputs(self, batch):
        out = batch[0]
        images = out["images"]
        if self.spec.hwc:  # (..., H, W, C) memory seen as (..., C, H, W): channels_last without a copy
            images = images.movedim(-1, -3)
        if self.dtype == "bfloat16":
            images = images.to(torch.bfloat16)
        return images, out["labels"].view(-1).long(), out["indices"].view(-1).long()

    def __iter__(self):
        shard_watch.check(self.tars, self.entries, self.stamps, f"before {self.split} epoch {self.epoch + 1}")
        if not self.train:
            yield from self._evaluation_epoch()
            return
        epoch, steps = self.epoch, len(self)
        run = self._start(epoch)
        try:
            for step in range(steps):
                # The reader covers at least steps * batch_size samples (its stretch), so this never runs dry.
                yield self._outputs(next(run.iterator))
                if step == 0:  # the consumer came back for more: a real epoch, not a peek at one batch
                    self._prepare(epoch + 1)
        finally:
            t0 = time.perf_counter()
            run.iterator = None  # the pipeline goes now, not at garbage collection: its GPU memory is needed
            run.timing.drop_s = time.perf_counter() - t0
        self.epoch = epoch + 1

    def _start(self, epoch):
        """This epoch's pipeline: the one prepared in the background if it is this epoch's, else built now."""
        t0 = time.perf_counter()
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == epoch:
            run = prepared[1].result()
        else:
            _drop(prepared)  # a jump (as on resume): the prepared epoch, if any, is not wanted
            run = self._build_epoch(epoch)
        run.timing.prepared = prepared is not None and prepared[0] == epoch
        run.timing.wait_s = time.perf_counter() - t0
        self.epoch_timings.append(run.timing)
        return run

    def _prepare(self, epoch):
        if self._prepared is None:
            self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-next-epoch")
            self._prepared = (epoch, self._pool.submit(self._build_epoch, epoch))

    def _build_epoch(self, epoch):
        """Build `epoch`'s pipeline over this rank's stretch and produce its first batch (which parses the index
        and fills the shuffle buffer); safe to run in a background thread."""
        t0 = time.perf_counter()
        parts = epoch_order.rank_parts(self.counts, self.seed, epoch, self.shard_id, self.num_shards)
        seed = int(np.random.SeedSequence([self.seed, epoch, self.shard_id]).generate_state(1)[0]) % (2**31 - 1)
        cuda = self.device == "cuda"
        stream = torch.cuda.Stream(self.device_id) if cuda else None
        with tempfile.TemporaryDirectory(prefix="dali-epoch-index-") as tmp:
            idxs = epoch_order.part_indexes(parts, self.idxs, self.counts, tmp)
            pipe = dali_pipeline([self.tars[p.file] for p in parts], idxs, batch_size=self.batch_size,
                                 num_threads=self.num_threads, device_id=self.device_id, seed=seed,
                                 prefetch_queue_depth=self.options.prefetch, spec=self.spec, shard_id=0,
                                 num_shards=1)
            pipe.build()
            t1 = time.perf_counter()
            # No reader_name: the iterator never ends by itself (__iter__ takes len(self) batches). The first
            # batch is made here, on a stream of this thread, and synchronised before another thread uses it.
            # The index files may go once it exists: the reader parsed them for it.
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                iterator = self._iterator_class(pipe, OUTPUTS, prepare_first_batch=True)
            if cuda:
                stream.synchronize()
        return _EpochPipeline(iterator, EpochTiming(epoch, False, t1 - t0, time.perf_counter() - t1))

    def _evaluation_epoch(self):
        if self._eval_iter is None:
            pipe = dali_pipeline(self.tars, self.idxs, batch_size=self.batch_size, num_threads=self.num_threads,
                                 device_id=self.device_id, seed=self.seed, prefetch_queue_depth=self.options.prefetch,
                                 spec=self.spec, shard_id=self.shard_id, num_shards=self.num_shards)
            self._eval_iter = self._iterator_class(pipe, OUTPUTS, reader_name="reader",
                                                   last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
        else:
            self._eval_iter.reset()
        for batch in self._eval_iter:
            images, labels, indices = self._outputs(batch)
            # Every shard is read for as many batches as the largest one needs; a shard one sample shorter whose
            # size divides by the batch gets an empty last batch: not a batch, and len() does not count it.
            if len(labels):
                yield images, labels, indices

    def close(self):
        """Drop the pipelines and the background thread now (else at garbage collection)."""
        prepared, self._prepared = self._prepared, None
        _drop(prepared)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._eval_iter = None


def _drop(prepared):
    """Wait for an unwanted background build and drop its pipeline; an error it hit would recur in the epoch
    that is built instead, where it is raised."""
    if prepared is not None and prepared[1].exception() is None:
        prepared[1].result().iterator = None


def make_loader(data_dir, split, batch_size, *, train=True, ten_crop=False, shard_id=0, num_shards=1, device="cpu",
                device_id=None, epoch=0, **options):
    """One worker's loader (DESIGN.md's contract): `train` and `ten_crop` name the view (pipeline/loader_options.py's
    View), the other keywords are LoaderOptions' fields."""
    return DaliLoader(data_dir, split, batch_size, view=View.of(train, ten_crop),
                      options=LoaderOptions.from_keywords(options), shard_id=shard_id, num_shards=num_shards,
                      device=device, device_id=device_id, epoch=epoch)
