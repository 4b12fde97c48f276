"""Deprecated: use `sigma reproduce ...` (sigma_lightning/reproduce.py), which pip installs. This
script forwards its arguments there, so that commands written for it keep working."""

import sys

from sigma_lightning.reproduce import main

if __name__ == "__main__":
    print("tools/reproduce.py is deprecated: run `sigma reproduce` with the same arguments.", file=sys.stderr)
    main(sys.argv[1:])
