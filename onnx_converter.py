"""Export a SAM / MobileSAM checkpoint to ONNX: `python onnx_converter.py --checkpoint models/mobile_sam.pt`.

The converter lives in `sam_ls_backend/predictors/onnx_convert.py`; `--help` lists its options.
"""

import sys

from sam_ls_backend.predictors.onnx_convert import main

if __name__ == "__main__":
    sys.exit(main())
