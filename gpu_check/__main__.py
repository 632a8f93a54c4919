"""python -m gpu_check: the GPU acceptance check (gpu_check/check.py)."""
import sys

from gpu_check.check import main

sys.exit(main())
