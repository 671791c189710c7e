"""`python -m needle` runs the `needle` command."""
import sys

from .train.cli import main

sys.exit(main())
