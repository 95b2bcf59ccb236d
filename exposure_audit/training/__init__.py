"""Training: the loop over an insert folder (``loop``), handed a strategy for how a step runs
(``strategy``: plain, DDP under torchrun; ``privacy``: DP-SGD through Opacus), the data it
reads (``data``: windows, validation), its resume files (``state``), its metrics file
(``metrics``) and exposure measured while a model learns (``tracking``).

``train_folder`` and ``run_training`` are the API: train an insert folder into a checkpoint.
"""

from .data import TrainData, evaluate, load_data, validation_record, windows
from .loop import TrainResult, run_training, strategy_for, train, train_folder
from .privacy import Private, check_dp, make_private
from .state import Position, load_train_state, read_train_state, save_train_state
from .strategy import Ddp, Plain

__all__ = [
    "Ddp",
    "Plain",
    "Position",
    "Private",
    "TrainData",
    "TrainResult",
    "check_dp",
    "evaluate",
    "load_data",
    "load_train_state",
    "make_private",
    "read_train_state",
    "run_training",
    "save_train_state",
    "strategy_for",
    "train",
    "train_folder",
    "validation_record",
    "windows",
]
