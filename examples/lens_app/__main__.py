"""``python -m examples.lens_app``."""

import sys

from .cli import main

sys.exit(main())
