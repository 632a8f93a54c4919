"""Chance level: when a validation error says the net has learnt something, and what to say when it has not.

A net that guesses has a top-1 error of 1 - 1/C on C classes. A measured error on n validation images scatters
around that by its binomial noise, sqrt(p (1 - p) / n); an error counts as a real improvement only when it is below
chance by more than NOISE_SIGMAS of that noise. Until then the plateau rule (cluster/loop.py LrSchedule) spends no
learning-rate decay: an error that never left chance has not stopped improving, it never started.
"""
import math
from dataclasses import dataclass

NOISE_SIGMAS = 3.0  # one-sided: a guessing net goes below this line about once in 700 epochs
STUCK_AFTER_EPOCHS = 3  # epochs at chance (after any warmup) before the run says so


@dataclass(frozen=True)
class ChanceLevel:
    num_classes: int
    val_images: int

    @property
    def error(self):
        return 1.0 - 1.0 / self.num_classes

    @property
    def noise(self):
        """The standard deviation of a guessing net's measured top-1 error on val_images images."""
        return math.sqrt(self.error * (1.0 - self.error) / max(self.val_images, 1))

    @property
    def threshold(self):
        """Errors below this are a real improvement on chance."""
        return self.error - NOISE_SIGMAS * self.noise

    def left(self, val_error):
        return val_error < self.threshold

    def describe(self):
        return (f"chance is {self.error:.4f} (1 - 1/{self.num_classes}) ± {self.noise:.4f} on {self.val_images:,} "
                f"images; below {self.threshold:.4f} counts as learning")


def stuck_message(epochs_at_chance, val_error, level, preset=None):
    """What a run still at chance after a few epochs should tell its user: what it means and what to try."""
    small = ("the paper preset was made for ImageNet's 1.28M images and its 50-step warmup and paper init can sit at "
             "chance for several epochs on a small set: for a quick check that the pipeline learns, use --preset "
             "demo (Kaiming init, no step warmup) or a lower --lr" if preset == "paper" else
             "try a lower --lr, or --init kaiming, and check the data: class balance, labels (docs/DATA.md)")
    return (f"warning: validation top-1 error {val_error:.4f} after {epochs_at_chance} epoch(s) past warmup is still "
            f"at chance ({level.describe()}). The net has not started to learn; the lr stays where it is (no "
            f"plateau decay is spent before the error leaves chance). If it stays there: {small}. See "
            "docs/TRAINING.md, \"A run at chance\".")
