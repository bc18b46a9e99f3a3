"""The ledger's own imports on its threads never show the SDK a half-imported module."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# a fresh process (not the warm child: httpx2 must not be imported yet) building a client right after
# configure() started loading the prices on its thread
_CLIENT_AFTER_CONFIGURE = textwrap.dedent(
    """
    import sys
    import openai, llm_ledger
    llm_ledger.configure(log_dir=sys.argv[1])
    httpx2 = sys.modules.get("httpx2")
    whole = httpx2 is not None and hasattr(httpx2, "URL") and hasattr(httpx2, "AsyncClient")
    openai.AsyncOpenAI(api_key="sk-x", base_url="http://127.0.0.1:9/v1")
    print("openai._httpx2" not in sys.modules or whole)
    """
)


def test_a_client_built_while_the_prices_load_finds_httpx2_whole(tmp_path: Path) -> None:
    """openai 2.x reads ``sys.modules["httpx2"]`` in every client's constructor, and genai-prices
    imports httpx2: a client built while configure()'s price load imported it on its thread found a
    partly initialised module (``AttributeError: partially initialized module 'httpx2' has no attribute
    'URL'``). configure() imports httpx2 on the caller's thread first. make test-compat runs this on
    openai 2.x; openai 3.x imports httpx2 itself, and 1.x never reads it."""
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT_AFTER_CONFIGURE, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", done.stderr
