"""Training SO3krates models: TrainConfig, the jitted step, a resumable loop that keeps the best model.

``train(config, dataset, out_dir)`` is the entry point; ``so3krates train`` its command line.
"""

from so3krates.train.config import TrainConfig
from so3krates.train.loop import TrainResult, iterate, train
from so3krates.train.state import TrainingStateError

__all__ = ["TrainConfig", "TrainResult", "TrainingStateError", "iterate", "train"]
