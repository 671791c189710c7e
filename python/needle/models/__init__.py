"""Ready-made models. Each engineer adds one import line for their models here."""
from .mlp_resnet import MLPResNet, ResidualBlock
from .resnet import ResNet9, SmallResNet
from .language import LanguageModel
