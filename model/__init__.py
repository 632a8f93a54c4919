"""The paper's AlexNet. Knows nothing of data loading or Ray."""
from model.alexnet import AlexNet, Column, GroupedAlexNet, paper_init_
from model.compile import compile_for_speed
from model.lrn import FastLocalResponseNorm, GroupedLocalResponseNorm

__all__ = ["AlexNet", "Column", "GroupedAlexNet", "FastLocalResponseNorm", "GroupedLocalResponseNorm",
           "compile_for_speed", "paper_init_"]
