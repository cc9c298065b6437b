"""``python -m regprune ...`` (and ``torchrun -m regprune ...``): the same CLI as ``regprune``."""

import sys

from regprune.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m regprune"))
