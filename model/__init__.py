"""The paper's AlexNet. Knows nothing of data loading or Ray."""
from model.alexnet import AlexNet, Column, GroupedAlexNet, paper_init_

__all__ = ["AlexNet", "Column", "GroupedAlexNet", "paper_init_"]
