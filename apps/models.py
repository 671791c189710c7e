"""hw4 model entry points (thin re-exports of needle.models)."""
import needle  # noqa: F401  (course tests import needle alongside)
from needle.models import ResNet9, SmallResNet
from needle.models import LanguageModel

__all__ = ["ResNet9", "SmallResNet", "LanguageModel"]
