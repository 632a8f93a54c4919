"""Running RGB statistics of the training split: mean, std and the PCA the paper's lighting augmentation uses.

Pixel values are on the 0..255 scale. We keep sums, not pixels, so the accumulator is tiny and can be saved in an
unfinished build's state and resumed."""
import numpy as np


def pixel_sums(pixels):
    """(count, sum, sum of outer products) of (k, 3) pixels: everything RGBStats needs from one image."""
    p = np.asarray(pixels, dtype=np.float64)
    return len(p), p.sum(0), p.T @ p


class RGBStats:
    def __init__(self, n=0, total=None, outer=None):
        self.n = n
        self.total = np.zeros(3) if total is None else np.asarray(total, dtype=np.float64)
        self.outer = np.zeros((3, 3)) if outer is None else np.asarray(outer, dtype=np.float64)

    def add_sums(self, n, total, outer):
        """What pixel_sums returned (computed in the builder's worker processes, off the parent's critical path)."""
        self.n += n
        self.total += total
        self.outer += outer

    def state(self):
        return {"n": self.n, "total": self.total.tolist(), "outer": self.outer.tolist()}

    @classmethod
    def from_state(cls, s):
        return cls(s["n"], s["total"], s["outer"])

    def summary(self):
        if self.n == 0:
            raise ValueError("no training pixels were seen: the training split is empty")
        mean = self.total / self.n
        cov = self.outer / self.n - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]  # largest principal component first
        return {
            "scale": "0-255",
            "pixels": int(self.n),
            "mean": mean.tolist(),
            # at least one grey level: a constant channel must not make normalisation divide by zero
            "std": np.sqrt(np.clip(np.diag(cov), 1.0, None)).tolist(),
            "eigval": np.clip(eigval[order], 0, None).tolist(),
            "eigvec": eigvec[:, order].tolist(),  # columns are eigenvectors
        }


NORMALIZE = ("paper", "std")


def input_normalization(stats, normalize):
    """(mean, std) per RGB channel, on the 0-255 scale, that every consumer of the shards applies as (x - mean) / std.

    paper: the paper's inputs (section 2, "the (centered) raw RGB values"): 0-255 pixels minus the training set's
      per-channel mean, no division (std 1). Per channel, not the mean image: the network sees random crops and flips
      of images of every aspect ratio, so a mean image would have to be cropped and flipped along with each crop (the
      paper does not say how), and the spatial structure it would remove averages out over crops.
    std: also divided by the per-channel std (unit-variance inputs, today's usual convention): ~58x smaller inputs
      than the paper's, for which its N(0, 0.01) init and lr 0.01 were not chosen."""
    if normalize == "paper":
        return list(stats["mean"]), [1.0, 1.0, 1.0]
    if normalize == "std":
        return list(stats["mean"]), list(stats["std"])
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
