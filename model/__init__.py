"""The paper's AlexNet. Knows nothing of data loading or Ray."""
from model.alexnet import INITS, AlexNet, Column, GroupedAlexNet, kaiming_init_, paper_init_
from model.compile import compile_for_speed
from model.lrn import FastLocalResponseNorm, GroupedLocalResponseNorm

__all__ = ["AlexNet", "Column", "GroupedAlexNet", "FastLocalResponseNorm", "GroupedLocalResponseNorm",
           "INITS", "compile_for_speed", "kaiming_init_", "paper_init_"]
