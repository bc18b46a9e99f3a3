"""Integration tests with the libraries people build on, each handed an instrumented client.

They run only in ``make test-compat``, in the venv of an SDK major the library installs with:
``LEDGER_INTEGRATION`` names the test modules that venv runs (e.g. ``langchain_openai litellm``).
A module named there whose library is missing fails to import: nothing is skipped silently.
"""

from __future__ import annotations

import os

_WANTED = set(os.environ.get("LEDGER_INTEGRATION", "").split())
collect_ignore = [
    name
    for name in os.listdir(os.path.dirname(__file__))
    if name.startswith("test_") and name.endswith(".py") and name[5:-3] not in _WANTED
]
_unknown = sorted(_WANTED - {name[5:-3] for name in os.listdir(os.path.dirname(__file__))})
if _unknown:
    raise RuntimeError(f"LEDGER_INTEGRATION names {_unknown!r}: no tests/integration/test_<name>.py for them")
# libraries that fetch data over the network when imported use their bundled copy instead
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
