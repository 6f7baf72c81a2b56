"""``python -m anchor_reg.benchmark``: see :mod:`anchor_reg.benchmark.cli`."""
from anchor_reg.benchmark.cli import main

main()
