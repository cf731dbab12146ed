"""Embed every image of a Label Studio project ahead of annotation: `python -m precompute --project ID`.

The command lives in `sam_ls_backend/precompute.py`; `--help` lists its options.
"""

import sys

from sam_ls_backend.precompute import main

if __name__ == "__main__":
    sys.exit(main())
