"""Ready-made models: MLPResNet, ResNet9, SmallResNet, DenseNet, FCN and the language
models."""
from .mlp_resnet import MLPResNet, ResidualBlock
from .resnet import ResNet9, SmallResNet
from .densenet import DenseNet
from .fcn import FCN
from .language import LanguageModel

__all__ = ["MLPResNet", "ResidualBlock", "ResNet9", "SmallResNet", "DenseNet", "FCN",
           "LanguageModel"]
