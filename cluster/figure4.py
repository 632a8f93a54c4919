"""The data of the paper's Figure 4, computed from a trained model and the shards (cluster/figures.py draws it).

Left half: eight validation images with the model's five most probable classes. Right half: five validation images,
each with the six training images whose fc7 features (the last hidden layer: the input of fc8) are nearest in
Euclidean distance. The training side searches a bounded, seeded subset of the training set (whole shard files,
pipeline.samples.subset_positions): all of ImageNet's 1.28M fc7 vectors (4096 floats each) would take ~21 GB, so
features are computed batch by batch and only a running top-6 per query is kept.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from pipeline import manifest as mf
from pipeline.samples import eval_view, iter_samples, normalise, read_samples, subset_positions

NUM_PREDICTIONS, NUM_QUERIES, NUM_NEIGHBOURS, TOP_K = 8, 5, 6, 5


@dataclass
class Prediction:
    image: np.ndarray  # uint8 HWC: the evaluation view the model saw
    label: int
    position: int  # in the validation split (pipeline.samples)
    top_labels: list  # most probable first
    top_probs: list


@dataclass
class Neighbour:
    image: np.ndarray
    label: int  # read from the neighbour's own sample
    position: int  # in the training split
    distance: float


@dataclass
class NeighbourRow:
    image: np.ndarray
    label: int
    position: int
    neighbours: list  # of Neighbour, nearest first


@dataclass
class Figure4Data:
    predictions: list  # of Prediction
    rows: list  # of NeighbourRow
    names: list  # class index -> display name
    train_searched: int  # training images whose features were compared
    train_total: int
    seed: int


def class_names(manifest):
    """The manifest's class names, each falling back to its wnid where unknown."""
    names = manifest.get("names") or [None] * len(manifest["classes"])
    return [name or wnid for name, wnid in zip(names, manifest["classes"])]


class RunningNearest:
    """The k nearest of all features seen so far to each query, updated one batch at a time: memory stays
    O(queries x (k + batch)) whatever the number of features. Ties go to the feature seen first (a stable sort),
    as a full stable sort over all features would give."""

    def __init__(self, queries, k):
        self.queries = torch.as_tensor(queries, dtype=torch.float64)
        self.k = k
        n = len(self.queries)
        self.distances = torch.empty(n, 0, dtype=torch.float64)
        self.ids = torch.empty(n, 0, dtype=torch.int64)

    def update(self, features, ids):
        features = torch.as_tensor(features, dtype=torch.float64)
        ids = torch.as_tensor(ids, dtype=torch.int64)
        # Pairwise differences, not the |a|^2 - 2ab + |b|^2 expansion: exact, so batching cannot change the order.
        d = torch.cdist(self.queries, features, compute_mode="donot_use_mm_for_euclid_dist")
        d = torch.cat([self.distances, d], dim=1)
        all_ids = torch.cat([self.ids, ids.expand(len(self.queries), -1)], dim=1)
        order = torch.sort(d, dim=1, stable=True).indices[:, :self.k]
        self.distances, self.ids = d.gather(1, order), all_ids.gather(1, order)


def default_device():
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def fc7_and_probs(model, batch, device):
    """(fc7 features, class probabilities) of a float NCHW batch, both float32 on the CPU. fc7 is caught as the
    input of fc8 (a forward pre-hook), which holds for every form of the model in eval mode."""
    caught = []
    hook = model.fc8.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
    try:
        logits = model(torch.as_tensor(batch).to(device))
    finally:
        hook.remove()
    return caught[0].float().cpu(), torch.softmax(logits.float(), dim=1).cpu()


def _batches(iterable, size):
    it = iter(iterable)
    while batch := list(islice(it, size)):
        yield batch


def compute_figure4(model, data_dir, crop, *, normalize, train_subset=20000, seed=0, batch_size=64, device=None,
                    threads=4, log=None):
    """Figure4Data for `model` (a GroupedAlexNet holding the run's weights; it is moved to `device`, default
    cuda:0 if there is one) on the shards at data_dir, the images seen as the evaluation loader shows them, with the
    run's input normalisation (config.json's "normalize")."""
    device = device or default_device()
    model = model.to(device).eval()
    manifest = mf.load(data_dir)
    stats = manifest["stats"]
    with ThreadPoolExecutor(threads) as pool:  # PIL decodes and resizes without the GIL

        def features(batch):
            views = list(pool.map(lambda s: eval_view(s.jpg, crop), batch))
            return views, *fc7_and_probs(model, normalise(views, stats, normalize), device)

        val_total = manifest["splits"]["val"]["num_samples"]
        chosen = np.random.default_rng([seed, 1]).choice(val_total, NUM_PREDICTIONS + NUM_QUERIES, replace=False) \
            if val_total >= NUM_PREDICTIONS + NUM_QUERIES else np.arange(val_total)
        val = read_samples(data_dir, manifest, "val", chosen)
        views, fc7, probs = features(val)
        k = min(TOP_K, probs.shape[1])
        top = probs.topk(k, dim=1)
        predictions = [Prediction(views[i], s.label, s.position, top.indices[i].tolist(), top.values[i].tolist())
                       for i, s in enumerate(val[:NUM_PREDICTIONS])]
        queries = list(range(len(val)))[-NUM_QUERIES:]  # disjoint from the predictions when there are 13 or more
        nearest = RunningNearest(fc7[queries], NUM_NEIGHBOURS)
        positions = subset_positions(manifest, "train", train_subset, seed)
        batches = _batches(iter_samples(data_dir, manifest, "train", positions), batch_size)
        for number, batch in enumerate(batches, 1):
            _, train_fc7, _ = features(batch)
            nearest.update(train_fc7, [s.position for s in batch])
            if log and number % 50 == 0:
                log(f"figure 4: fc7 features of {min(number * batch_size, len(positions))}/{len(positions)} "
                    "training images")
        found = sorted(set(nearest.ids.flatten().tolist()))
        hits = {s.position: s for s in read_samples(data_dir, manifest, "train", found)}
        thumbs = dict(zip(found, pool.map(lambda p: eval_view(hits[p].jpg, crop), found)))
    rows = [NeighbourRow(views[q], val[q].label, val[q].position,
                         [Neighbour(thumbs[p], hits[p].label, p, d)
                          for p, d in zip(nearest.ids[r].tolist(), nearest.distances[r].tolist())])
            for r, q in enumerate(queries)]
    return Figure4Data(predictions, rows, class_names(manifest), len(positions),
                       manifest["splits"]["train"]["num_samples"], seed)
