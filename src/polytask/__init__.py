"""polytask: fine-tune one pretrained encoder on many NLP tasks at once.

Public API::

    import polytask
    config = polytask.load_config("examples/atis.yaml", ["train.epochs=1"])
    result = polytask.train(config)
    model = polytask.load(result.best_dir)
    model.predict(["show me flights from boston to denver"])
    polytask.tune(polytask.load_config("my.yaml"), trials=20)   # with a tune: section (Optuna)
"""

from polytask.config import Config, ModelConfig, TaskConfig, TrainConfig, load_config
from polytask.errors import NotSupportedError, UserError
from polytask.model.multitask import MultiTaskModel
from polytask.predict import Predictor, load
from polytask.train.loop import TrainResult, train
from polytask.tune import tune  # noqa: E402  (the function; the package stays importable as polytask.tune.*)
from polytask.version import __version__

__all__ = [
    "Config", "ModelConfig", "TaskConfig", "TrainConfig", "load_config", "UserError", "NotSupportedError",
    "MultiTaskModel", "Predictor", "load", "train", "TrainResult", "tune", "__version__",
]
