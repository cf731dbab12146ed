"""The Label Studio-facing model, where Label Studio's ML backends keep it: `from model import SamBackend`.

The backend lives in the `sam_ls_backend` package (see README, "Layout"); this file only names it.
"""

from sam_ls_backend.backend import SamBackend

__all__ = ["SamBackend"]
