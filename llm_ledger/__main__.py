"""``python -m llm_ledger``: the ``llm-ledger`` console script, for environments without its entry point."""

import sys

from ._cli import main

sys.exit(main())
