"""Training: one loop for pretraining the dense backbone and fine-tuning every method from it."""

from bench.train.loop import TrainResult, train_model

__all__ = ["TrainResult", "train_model"]
