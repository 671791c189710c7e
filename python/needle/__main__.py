"""`python -m needle` runs the `needle` command."""
import sys

from .cli import main

sys.exit(main())
