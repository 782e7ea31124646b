"""`python -m robolearn ...`: the `robolearn` command. Also the form torchrun needs for DDP:
`torchrun --nproc_per_node N -m robolearn train ...`."""

import sys

from robolearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
