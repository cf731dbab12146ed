"""Export SAM / MobileSAM to ONNX: not part of this release yet (see README, "ONNX").

Kept as the command users of Label Studio's SAM example look for; it says so instead of half-exporting.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export SAM / MobileSAM to ONNX (not available in this release)")
    parser.parse_args(argv)
    print("error: ONNX export is not available in this release yet; serve with SAM_CHOICE=MobileSAM or SAM",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
