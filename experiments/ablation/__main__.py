"""python -m experiments.ablation: the study of the paper's claims (experiments/ablation/study.py)."""
import sys

from experiments.ablation.study import main

sys.exit(main())
