"""Ready-made models: MLPResNet, ResNet9, SmallResNet and the language models."""
from .mlp_resnet import MLPResNet, ResidualBlock
from .resnet import ResNet9, SmallResNet
from .language import LanguageModel

__all__ = ["MLPResNet", "ResidualBlock", "ResNet9", "SmallResNet", "LanguageModel"]
