"""exposure-audit: measure unintended memorization of planted secrets (Secret Sharer exposure).

The library under the CLI::

    from exposure_audit import Format, load_checkpoint, score, measure
"""

__version__ = "0.1.0"

from .data.formats import Format
from .data.manifest import Canary, Manifest
from .data.pipeline import insert_folder
from .errors import AuditError
from .exposure.engine import score
from .exposure.measure import CanaryResult, measure
from .integrations import track
from .models import CharLSTM, load_checkpoint, save_checkpoint
from .training import train_folder

__all__ = [
    "AuditError",
    "Canary",
    "CanaryResult",
    "CharLSTM",
    "Format",
    "Manifest",
    "insert_folder",
    "load_checkpoint",
    "measure",
    "save_checkpoint",
    "score",
    "track",
    "train_folder",
]
