"""Training-time augmentation: ``train.augment`` trains on noisy copies of the training rows (made by the noise
suite that ``polytask robustness`` measures with), optionally with a consistency term between clean and noisy
predictions."""

from polytask.augment.noise_copies import NoiseAugmentation

__all__ = ["NoiseAugmentation"]
