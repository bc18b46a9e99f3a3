"""``llm-ledger reprice``: recorded usage (a JSONL log, a pytest report) priced with another model, provider
or price file, lens by lens, before and after."""

from __future__ import annotations

import gzip
import json
import os
import re
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger._jsonl import JsonlFileHandler
from llm_ledger.report import usage_row
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger._report import SessionLedger
from tests.conftest import Sdk
from tests.report_helpers import logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "summarise the quarterly numbers for the board please"}]


def list_price(model: str, calls: list[dict[str, Any]], provider: str = "openai") -> Decimal:
    """What genai-prices itself says ``calls``' usage costs on ``model`` (the independent reference)."""
    total = Decimal(0)
    for call in calls:
        usage = call["usage"]
        total += genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage["prompt_tokens"],
                cache_read_tokens=usage["cached_tokens"],
                output_tokens=usage["completion_tokens"],
            ),
            model,
            provider_id=provider,
        ).total_price
    return total


@pytest.fixture
def recorded(sdk: Sdk, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A JSONL log of real SDK calls: lens "summary" on gpt-4o (one with cached tokens), lens "tags" on
    gpt-4o-mini (one streamed), lens "routed" with a provider-reported cost, and a call outside any lens;
    and the call records themselves."""
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    calls: list[dict[str, Any]] = []
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    monitor.add_sink(lambda r: calls.append(dict(r)) if r["event"] == "llm_api_call" else None)
    client = sdk(monitor)
    with monitor.lens("summary"):
        client.chat.completions.create(model="gpt-4o", messages=HI)
        client.chat.completions.create(
            model="gpt-4o", messages=HI, extra_headers={"x-fake-cached-tokens": "8"}
        )
    with monitor.lens("tags"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True):
            pass
    with monitor.lens("routed"):  # through a router that reports what it billed (OpenRouter)
        client.chat.completions.create(model="gpt-4.1", messages=HI, extra_headers={"x-fake-cost": "0.5"})
    client.embeddings.create(model="text-embedding-3-small", input="loose call")
    handler.close()
    return path, calls


def reprice_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["reprice", *args, "--format", "json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def by_lens(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["lens"]: row for row in result["lenses"]}


def recorded_cost(calls: list[dict[str, Any]]) -> float:
    return float(sum(c["cost"]["total_cost_usd"] for c in calls))


def test_swapping_a_model_reprices_its_lenses_only(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """gpt-4o -> gpt-4.1-mini: the summary lens costs the cheaper model's price for the same tokens
    (cached ones included), the others stay as recorded; before is what was recorded."""
    path, calls = recorded
    result = reprice_json(capsys, str(path), "--model", "gpt-4o=gpt-4.1-mini")
    rows = by_lens(result)
    summary = [c for c in calls if c["context"].get("lens_key") == "summary"]
    assert rows["summary"]["calls"] == 2
    assert rows["summary"]["before_usd"] == pytest.approx(recorded_cost(summary), rel=1e-9)
    assert rows["summary"]["after_usd"] == pytest.approx(float(list_price("gpt-4.1-mini", summary)), rel=1e-9)
    assert rows["summary"]["after_usd"] < rows["summary"]["before_usd"]
    assert rows["tags"]["after_usd"] == pytest.approx(rows["tags"]["before_usd"], rel=1e-9)
    assert rows["<no lens>"]["calls"] == 1
    assert rows["routed"]["before_usd"] == rows["routed"]["after_usd"] == 0.5  # what the provider billed
    assert result["total"]["before_usd"] == pytest.approx(recorded_cost(calls), rel=1e-9)
    assert result["changes"] == {"models": {"gpt-4o": "gpt-4.1-mini"}, "provider": None, "price_file": None}
    assert all(row["before_complete"] and row["after_complete"] for row in result["lenses"])


def test_text_table_shows_before_after_and_change_per_lens(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """The default output is a table: one row per lens, a total, the change in dollars and percent."""
    path, _ = recorded
    assert main(["reprice", str(path), "--model", "gpt-4o=gpt-4.1-mini"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Repriced llm_calls.jsonl (log): gpt-4o -> gpt-4.1-mini\n")
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("lens"))
    assert header.split() == ["lens", "calls", "before", "after", "change", "%"]
    summary = next(line for line in lines if line.startswith("summary"))
    assert summary.split()[-1].startswith("-") and summary.split()[-1].endswith("%")
    assert next(line for line in lines if line.startswith("tags")).split()[-2:] == ["$0.000000", "0.0%"]
    assert any(line.startswith("(total)") for line in lines)
    assert main(["reprice", str(path), "--model", "gpt-4o=gpt-4.1-mini", "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert "| lens | calls | before | after | change | % |" in markdown
    assert any(line.startswith("| **(total)** | **6** |") for line in markdown)


def test_another_provider_prices_every_call_at_its_rates(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """--provider prices every call there: models it does not list are left out and named."""
    path, calls = recorded
    result = reprice_json(
        capsys, str(path), "--provider", "groq", "--model", "gpt-4o=llama-3.3-70b-versatile"
    )
    rows = by_lens(result)
    summary = [c for c in calls if c["context"].get("lens_key") == "summary"]
    assert rows["summary"]["after_usd"] == pytest.approx(
        float(list_price("llama-3.3-70b-versatile", summary, "groq")), rel=1e-9
    )
    assert rows["tags"]["after_complete"] is False  # groq does not sell gpt-4o-mini
    assert result["unpriced_after"] == {"gpt-4.1": 1, "gpt-4o-mini": 2, "text-embedding-3-small": 1}


def test_price_file_hosts_apply_to_the_recorded_servers(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A price file mapping the recorded host to a rate of 0 (moving to a self-hosted box) prices all at 0;
    the table's heading names the price file."""
    path, _ = recorded
    prices = tmp_path / "prices.yaml"
    prices.write_text('version: 1\nhosts:\n  "127.0.0.1": {provider: vllm, input: 0, output: 0}\n')
    result = reprice_json(capsys, str(path), "--price-file", str(prices))
    assert result["total"]["after_usd"] == 0.0
    assert result["total"]["before_usd"] > 0
    assert result["changes"]["price_file"] == str(prices)
    assert main(["reprice", str(path), "--price-file", str(prices)]) == 0
    assert capsys.readouterr().out.startswith(f"Repriced llm_calls.jsonl (log): prices from {prices}\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "gpt-4o=gpt-4.1-mni"],
            "--model ...=gpt-4.1-mni: no price for 'gpt-4.1-mni' at provider 'openai' "
            "(did you mean 'gpt-4.1-mini'",
        ),
        (
            ["--model", "gpt-4o-mni=gpt-4.1"],
            "--model gpt-4o-mni=gpt-4.1: no call in llm_calls.jsonl (log) used 'gpt-4o-mni' "
            "(did you mean 'gpt-4o-mini'",
        ),
        (
            ["--provider", "grok"],
            "--provider: unknown provider 'grok' (did you mean 'groq'?); known providers:",
        ),
        (["--model", "gpt-4o"], "--model 'gpt-4o': expected OLD=NEW, e.g. --model gpt-4o=gpt-4.1-mini"),
        # the "=" is quoted (a value with one is not a credential for that); which side is empty is said
        (["--model", "=gpt-4o"], "--model '=gpt-4o': expected OLD=NEW (OLD is empty), e.g. --model gpt-4o="),
        (["--model", "gpt-4o= "], "--model 'gpt-4o= ': expected OLD=NEW (NEW is empty), e.g. --model "),
        (
            ["--model", "gpt-4o=gpt-4.1-mini", "--model", "gpt-4o=o3"],
            "--model gpt-4o=o3: gpt-4o is already priced as gpt-4.1-mini; give one NEW per OLD",
        ),
    ],
)
def test_unknown_models_and_providers_name_the_close_matches(
    capsys: pytest.CaptureFixture[str],
    recorded: tuple[Path, list[dict[str, Any]]],
    args: list[str],
    message: str,
) -> None:
    """A typo in a model or a provider is an error (exit 2) naming it and what it may have meant."""
    path, _ = recorded
    assert main(["reprice", str(path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"llm-ledger reprice: error: {message}")


KEY = (
    "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"
)  # a key pasted as a model name (built: no secret scanner trips)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model", f"gpt-4o={KEY}"], "--model ...=<"),  # NEW has no price
        (["--model", f"{KEY}=gpt-4o"], "no call in llm_calls.jsonl (log) used <"),  # OLD no call used
        (["--model", f"gpt-4o-mni={KEY}"], "--model <"),
        (["--model", "gpt-4o=o3", "--model", f"gpt-4o={KEY}"], "is already priced as o3"),
    ],
)
def test_a_key_given_as_a_model_is_never_echoed(
    capsys: pytest.CaptureFixture[str],
    recorded: tuple[Path, list[dict[str, Any]]],
    args: list[str],
    named: str,
) -> None:
    """`--model gpt-4o=$KEY` (a shell variable mixed up, a paste from the wrong line): the error names
    the flag and says what is wrong, the key by its length only; it was quoted whole to stderr, which
    CI keeps in its logs."""
    path, _ = recorded
    assert main(["reprice", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert KEY not in err and KEY[:12] not in err
    assert named in err and "characters not shown: they look like a credential>" in err


def test_a_pytest_report_reprices_like_the_log_it_came_from(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The plugin's report keeps each lens's tokens per provider, server and model (also across xdist
    workers), so repricing the report gives what repricing the calls gives."""
    path, calls = recorded
    worker_a, worker_b, controller = SessionLedger(), SessionLedger(), SessionLedger()
    for number, call in enumerate(calls):
        (worker_a if number % 2 else worker_b).add_call("tests/test_x.py::test_x", call)
    for worker in (worker_a, worker_b):
        controller.merge_wire(json.loads(json.dumps(worker.to_wire())))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(controller.report(), indent=2))
    from_report = reprice_json(capsys, str(report), "--model", "gpt-4o=gpt-4.1-mini")
    from_log = reprice_json(capsys, str(path), "--model", "gpt-4o=gpt-4.1-mini")
    assert from_report["source"] == "report.json (report)"
    for key in ("lenses", "total", "unpriced_after"):
        assert from_report[key] == from_log[key]


def test_usage_row_reads_one_call_record(
    fake_openai: FakeOpenAI, recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """``llm_ledger.report.usage_row``, the one reading of a call's usage that reprice and the plugin's
    report share: lens, server, models, tokens and the recorded cost; a call without one is uncosted."""
    _, calls = recorded
    cached = calls[1]  # lens "summary", gpt-4o with 8 cached tokens
    row = usage_row(cached)
    assert (row.lens, row.provider, row.server) == ("summary", "openai", f"127.0.0.1:{fake_openai.port}")
    assert (row.model, row.served_model, row.calls) == ("gpt-4o", cached["response"]["model"], 1)
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (
        cached["usage"]["prompt_tokens"],
        8,
        cached["usage"]["completion_tokens"],
    )
    assert row.cost_usd == Decimal(str(cached["cost"]["total_cost_usd"])) > 0
    assert (row.uncosted_calls, row.no_usage_calls) == (0, 0)
    assert usage_row({**cached, "cost": None}).uncosted_calls == 1
    assert usage_row({**cached, "usage": None}).no_usage_calls == 1
    assert usage_row({**calls[-1], "context": {}}).lens == "<no lens>"


def test_a_report_without_usage_says_how_to_get_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A report written before reprice existed is refused with the command that writes a usable one."""
    report = tmp_path / "old.json"
    report.write_text(
        json.dumps(
            {
                "schema": "llm-ledger-report",
                "version": 1,
                "lenses": {},
                "total": {"api_calls": 0, "total_tokens": 0, "cost_usd": 0, "errors": 0},
            },
            indent=2,
        )
    )
    assert main(["reprice", str(report)]) == 2
    assert "has no per-model usage" in capsys.readouterr().err
    assert main(["reprice", str(report), "--since", "2026-11-23"]) == 2  # no timestamps to pick by
    assert "a pytest report keeps no timestamps or context per call" in capsys.readouterr().err


def test_missing_input_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A path that does not exist names itself and what was expected."""
    assert main(["reprice", str(tmp_path / "nope.jsonl")]) == 2
    assert (
        "no such file; pass an llm_calls.jsonl log or a pytest --llm-report file" in capsys.readouterr().err
    )


def test_a_log_directory_glob_or_several_logs_reprice_like_report_reads_them(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """As `llm-ledger report`, reprice reads a directory of rotated logs (.gz too), a glob or several
    files: the same lenses, calls and costs as the one log they were cut from."""
    path, _ = recorded
    whole = reprice_json(capsys, str(path), "--model", "gpt-4o=gpt-4.1-mini")
    lines = path.read_bytes().splitlines(keepends=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "llm_calls.jsonl.1.gz").write_bytes(gzip.compress(b"".join(lines[:4])))
    (logs / "llm_calls.jsonl").write_bytes(b"".join(lines[4:]))
    for inputs in (
        [str(logs)],
        [str(logs / "llm_calls.jsonl*")],
        [str(logs / "llm_calls.jsonl.1.gz"), str(logs / "llm_calls.jsonl")],
    ):
        result = reprice_json(capsys, *inputs, "--model", "gpt-4o=gpt-4.1-mini")
        assert result["lenses"] == whole["lenses"], inputs
        assert result["total"] == whole["total"]


def test_a_provider_reported_cost_stands_until_its_model_changes(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """A cost the provider billed is kept while the call stays as it was; a swapped model gets the
    price table's figure for it."""
    path, calls = recorded
    routed = [c for c in calls if c["context"].get("lens_key") == "routed"]
    assert by_lens(reprice_json(capsys, str(path)))["routed"]["after_usd"] == 0.5
    swapped = by_lens(reprice_json(capsys, str(path), "--model", "gpt-4.1=gpt-4.1-nano"))["routed"]
    assert swapped["before_usd"] == 0.5
    assert swapped["after_usd"] == pytest.approx(float(list_price("gpt-4.1-nano", routed)), rel=1e-9)


def test_a_lens_name_with_a_lone_surrogate_is_written_escaped(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """A lens key holding a lone surrogate (valid JSON as an escape, which the ledger writes) reprices
    in every format; JSON writes it as the escape (it was a traceback)."""
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    client = sdk(monitor)
    with monitor.lens("caf\udce9"):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    handler.close()
    assert "\\udce9" in path.read_text()
    assert by_lens(reprice_json(capsys, str(path)))["caf\udce9"]["calls"] == 1
    assert main(["reprice", str(path)]) == 0
    assert "caf\\udce9  " in capsys.readouterr().out


def test_a_log_whose_file_name_is_not_utf8_reprices_to_printable_text(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """A file name with a byte that is not UTF-8 (argv gives it as a lone surrogate) is shown escaped,
    as ``llm-ledger report`` shows it: strict UTF-8 output can print the table (it was an error)."""
    path = tmp_path / os.fsdecode(b"calls-\xff.jsonl")
    handler = JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    with monitor.lens("summary"):
        sdk(monitor).chat.completions.create(model="gpt-4o", messages=HI)
    handler.close()
    assert main(["reprice", str(path), "--model", "gpt-4o=gpt-4o-mini"]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # strict: a lone surrogate would raise here, as it did on a strict stdout
    assert "calls-\\udcff.jsonl" in out.splitlines()[0]


def test_repricing_with_the_recording_price_file_keeps_what_the_provider_billed(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """A log recorded with a price file that maps the gateway's host to OpenRouter, repriced with that
    same file, keeps the cost OpenRouter reported: nothing changed, so "after" equals "before"."""
    prices = tmp_path / "prices.yaml"
    prices.write_text('version: 1\nhosts:\n  "127.0.0.1": {provider: openrouter}\n')
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(
        logger=None, sinks=[handler.write_record], prices=llm_ledger.PriceTable.from_file(prices)
    )
    client = sdk(monitor)
    with monitor.lens("routed"):
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=HI, extra_headers={"x-fake-cost": "0.000123"}
        )
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HI)
    handler.close()
    row = by_lens(reprice_json(capsys, str(path), "--price-file", str(prices)))["routed"]
    assert row["before_usd"] > 0.000123
    assert row["after_usd"] == row["before_usd"]


def test_a_report_reprices_long_context_tiers_per_call_not_per_sum(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """Three 100k-token calls repriced on gpt-5.4 (dearer above 272k prompt tokens per call) cost the
    base rate from the plugin's report, as from the log: the report's row sums them to 300k tokens,
    which is no single call's size."""
    calls: list[dict[str, Any]] = []
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    monitor.add_sink(lambda r: calls.append(dict(r)) if r["event"] == "llm_api_call" else None)
    client = sdk(monitor)
    with monitor.lens("long"):
        for _ in range(3):  # the fake server's prompt is at least the cached tokens
            client.chat.completions.create(
                model="gpt-4o", messages=HI, extra_headers={"x-fake-cached-tokens": "100000"}
            )
    ledger = SessionLedger()
    for call in calls:
        ledger.add_call("tests/test_x.py::test_x", call)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(ledger.report(), indent=2))
    after = reprice_json(capsys, str(report), "--model", "gpt-4o=gpt-5.4")["total"]["after_usd"]
    assert after == pytest.approx(float(list_price("gpt-5.4", calls)), rel=1e-12)


def test_calls_with_no_price_after_are_not_a_saving(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """At a provider that sells none of the models, "after" knows no price: the change is "—", not
    -100%; where some calls keep a price, the change compares only those (marked *)."""
    path, _ = recorded
    assert main(["reprice", str(path), "--provider", "groq"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = next(line for line in lines if line.startswith("(total)")).split()
    assert total[-3:] == ["$0.000000*", "—", "—"]
    # gpt-4o moved to a Llama on Groq: only lens "summary" has a price after, and it alone is compared
    llama = "gpt-4o=llama-3.3-70b-versatile"
    result = reprice_json(capsys, str(path), "--provider", "groq", "--model", llama)
    rows = by_lens(result)
    summary = rows["summary"]
    assert summary["change_usd"] == pytest.approx(summary["after_usd"] - summary["before_usd"], rel=1e-12)
    assert rows["tags"]["change_usd"] is None and rows["tags"]["after_complete"] is False
    assert result["total"]["change_usd"] == summary["change_usd"]


def test_a_call_reporting_more_cached_than_prompt_tokens_is_unpriced_not_a_crash(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A compatible server that counts cached tokens outside prompt_tokens leaves a call the ledger
    recorded without a cost; reprice counts it as unpriced after, beside the others, with no traceback."""
    _, calls = recorded
    odd = json.loads(json.dumps(calls[0]))
    odd["usage"].update(prompt_tokens=10, cached_tokens=100)
    odd["cost"].update(prompt_cost_usd=None, completion_cost_usd=None, total_cost_usd=None, source=None)
    log = tmp_path / "odd.jsonl"
    log.write_text("".join(json.dumps(call) + "\n" for call in [odd, *calls[1:]]))
    result = reprice_json(capsys, str(log))
    assert result["unpriced_after"] == {"gpt-4o": 1}
    summary = by_lens(result)["summary"]
    assert summary["after_complete"] is False and summary["calls"] == 2
    assert summary["after_usd"] == pytest.approx(calls[1]["cost"]["total_cost_usd"], rel=1e-12)
    assert main(["reprice", str(log)]) == 0
    out = capsys.readouterr().out
    assert "after leaves out calls with no known price: 'gpt-4o' (1 call)\n" in out, out  # no name hint


def test_where_since_and_until_select_the_calls_as_report_does(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """ "What would alice's calls since Monday cost on gpt-4.1-mini": --where and --since pick the same
    calls as `llm-ledger report`, so "before" is the report's cost; a typo names the dimensions."""
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    calls: list[dict[str, Any]] = []
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    monitor.add_sink(lambda r: calls.append(dict(r)) if r["event"] == "llm_api_call" else None)
    client = sdk(monitor)
    for user, words in [("alice", "3"), ("bob", "40"), ("alice", "90"), ("alice", "7"), ("bob", "5")]:
        with monitor.lens("digest", user_id=user):
            client.chat.completions.create(
                model="gpt-4o", messages=HI, extra_headers={"x-fake-completion-words": words}
            )
    handler.close()
    since = calls[2]["timing"]["start_time"]  # a call counts at its start, as it is priced
    picked = [c for c in calls[2:] if c["context"]["user_id"] == "alice"]
    assert calls[1]["timing"]["start_time"] < since  # each call takes a round trip: never the same ms
    args = ["--where", "user_id=alice", "--since", since]
    result = reprice_json(capsys, str(path), *args, "--model", "gpt-4o=gpt-4.1-mini")
    assert main(["report", str(path), *args, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert result["total"]["calls"] == report["total"]["calls"] == len(picked) == 2
    assert result["total"]["before_usd"] == pytest.approx(report["total"]["cost_usd"], rel=1e-12)
    assert result["total"]["after_usd"] == pytest.approx(float(list_price("gpt-4.1-mini", picked)), rel=1e-12)
    assert result["source"].startswith("llm_calls.jsonl (log, user_id=alice, since 20")
    assert main(["reprice", str(path), "--where", "usr=alice"]) == 2
    assert "where: no record has a dimension 'usr' (did you mean 'user_id'?)" in capsys.readouterr().err


def test_before_reads_as_the_report_shows_the_same_cost(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The same exact cost is written alike by reprice and report: money rounds half up, and a cost
    under a cent keeps three significant digits ($0.00000810, not $0.000008)."""
    from tests.report_helpers import call, write

    log = write(
        tmp_path / "llm_calls.jsonl",
        [call(lens="digest", cost="0.0006345"), call(lens="tiny", cost="0.0000081")],
    )
    assert main(["report", str(log)]) == 0
    report = {line.split()[0]: line.split()[-2] for line in capsys.readouterr().out.splitlines()[2:4]}
    assert report == {"digest": "$0.000635", "tiny": "$0.00000810"}
    assert main(["reprice", str(log)]) == 0
    before = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[4:6]}
    assert before == report


def test_markdown_keeps_the_no_lens_row_visible_in_a_pr_comment(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """GitHub reads a bare `<no lens>` in a table cell as an HTML tag and drops it, leaving a row with
    no name: the markdown escapes the `<`."""
    path, _ = recorded
    assert main(["reprice", str(path), "--format", "markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "no lens" in line]
    assert len(rows) == 1 and rows[0].startswith("| \\<no lens> | 1 |"), rows


def test_self_hosted_calls_are_never_repriced_at_a_vendors_list_price(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """gpt-oss-120b served by our own vLLM, recorded at the price file's $0: repriced without that file
    it has no price (n/a, named with its server's provider), not OpenAI's list price for gpt-oss."""
    prices = tmp_path / "prices.yaml"
    prices.write_text('version: 1\nhosts:\n  "127.0.0.1": {provider: vllm, input: 0, output: 0}\n')
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(
        logger=None, sinks=[handler.write_record], prices=llm_ledger.PriceTable.from_file(prices)
    )
    client = sdk(monitor)
    with monitor.lens("local"):
        client.chat.completions.create(model="gpt-oss-120b", messages=HI)
    handler.close()
    assert by_lens(reprice_json(capsys, str(path), "--price-file", str(prices)))["local"]["after_usd"] == 0
    result = reprice_json(capsys, str(path))
    local = by_lens(result)["local"]
    assert (local["before_usd"], local["after_usd"], local["change_usd"]) == (0, 0, None)
    assert local["after_complete"] is False
    assert result["unpriced_after"] == {"gpt-oss-120b (at vllm)": 1}


def test_a_model_openrouter_names_with_its_vendor_says_how_to_price_it(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]]
) -> None:
    """OpenAI's gpt-4o is 'openai/gpt-4o' on OpenRouter: --provider openrouter leaves it unpriced, and
    the footnote gives the --model that prices it there."""
    path, _ = recorded
    assert main(["reprice", str(path), "--provider", "openrouter"]) == 0
    out = capsys.readouterr().out
    assert "'gpt-4o' (2 calls; at openrouter it is 'openai/gpt-4o': --model gpt-4o=openai/gpt-4o)" in out
    fixed = reprice_json(capsys, str(path), "--provider", "openrouter", "--model", "gpt-4o=openai/gpt-4o")
    assert by_lens(fixed)["summary"]["after_complete"] is True


def _report_of(calls: list[dict[str, Any]], path: Path) -> Path:
    ledger = SessionLedger()
    for call in calls:
        ledger.add_call("tests/test_x.py::test_x", call)
    path.write_text(json.dumps(ledger.report(), indent=2))
    return path


@pytest.mark.usefixtures("priced_when_made")
@pytest.mark.parametrize("said", [True, False], ids=["priced_at", "log-before-priced_at"])
def test_a_report_reprices_each_call_at_its_own_time_of_day(
    capsys: pytest.CaptureFixture[str],
    recorded: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    said: bool,
) -> None:
    """Calls priced by the time of day (DeepSeek's peak and off-peak hours) keep their minute in the
    report's usage rows, so repricing the report gives what repricing the calls gives, whatever the time
    now, on another model too; calls whose price the time does not change keep none (a report written
    again from the same cassettes stays the same), and a what-if prices them at the time of repricing.
    The minute is the record's ``cost.priced_at``, else (a log written before records said it) its start."""
    _, calls = recorded
    hours = ("2026-12-03T10:00:05.250000+00:00", "2026-12-03T20:00:05.250000+00:00")  # peak, off-peak
    timed = [
        {
            **call,
            "timing": {**call["timing"], "start_time": hours[number % 2]},
            "cost": {k: v for k, v in call["cost"].items() if k != "priced_at"}
            | ({"priced_at": hours[number % 2]} if said else {}),
            "server": {**call["server"], "provider": "deepseek"},
            "request": {**call["request"], "model": "deepseek-chat"},
            "response": {**call["response"], "model": "deepseek-chat"},
        }
        for number, call in enumerate(calls)
    ]
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(call) + "\n" for call in timed))
    report = _report_of(timed, tmp_path / "report.json")
    assert {row["at"] for row in json.loads(report.read_text())["usage"]} == {
        "2026-12-03T10:00:00+00:00",
        "2026-12-03T20:00:00+00:00",
    }
    for swap in ([], ["--model", "deepseek-chat=deepseek-reasoner"]):
        from_report = reprice_json(capsys, str(report), *swap)
        from_log = reprice_json(capsys, str(log), *swap)
        for key in ("lenses", "total", "unpriced_after"):
            assert from_report[key] == from_log[key]
    openai_rows = json.loads(_report_of(calls, tmp_path / "openai.json").read_text())["usage"]
    assert {row["at"] for row in openai_rows} == {None}


def test_a_report_written_before_tiers_and_times_reprices_as_before(
    capsys: pytest.CaptureFixture[str], recorded: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Usage rows without a service tier, a minute or the audio and cache-write counts (an older
    report) read as standard-tier text calls priced now; a malformed one names the row and field."""
    _, calls = recorded
    report = _report_of(calls, tmp_path / "report.json")
    data = json.loads(report.read_text())
    new = ("service_tier", "at", "cache_write_tokens", "prompt_audio_tokens", "completion_audio_tokens")
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps(
            {**data, "usage": [{k: v for k, v in row.items() if k not in new} for row in data["usage"]]}
        )
    )
    swap = ("--model", "gpt-4o=gpt-4.1-mini")
    assert reprice_json(capsys, str(old), *swap)["total"] == reprice_json(capsys, str(report), *swap)["total"]
    for field, value, expected in [
        ("at", "yesterday", "at: expected an ISO date-time or null, got 'yesterday'"),
        ("service_tier", 1, "service_tier: expected a tier name or null, got 1"),
        ("prompt_audio_tokens", -1, "prompt_audio_tokens: expected a whole number >= 0, got -1"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**data, "usage": [{**data["usage"][0], field: value}]}))
        assert main(["reprice", str(bad)]) == 2
        assert f"{bad}: usage[0].{expected}" in capsys.readouterr().err


def test_calls_that_reported_no_usage_are_named_under_the_table(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream read without its usage chunk has no tokens to price: its lens's "after" is marked `*`,
    and the note under the table (and the JSON) says how many calls that is, as it names the models
    with no price."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client), monitor.lens("quiet"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": False}
        ):
            pass
        # a server whose usage gives its total alone: no split to price either, though it reported usage
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-usage-style": "total-only"}
        )
    assert main(["reprice", str(path), "--model", "gpt-4o-mini=gpt-4o"]) == 0
    out = capsys.readouterr().out
    assert "$0.0000" in next(line for line in out.splitlines() if line.startswith("quiet"))
    assert (
        "* after leaves out 2 calls that reported no prompt and completion tokens to price (no usage, or "
        "only a total of tokens)" in out
    )
    result = reprice_json(capsys, str(path), "--model", "gpt-4o-mini=gpt-4o")
    assert (result["total"]["after_complete"], result["no_usage_calls"]) == (False, 2)


def test_calls_priced_by_a_price_file_when_made_are_named_when_repriced_without_it(
    capsys: pytest.CaptureFixture[str], sdk: Sdk, tmp_path: Path
) -> None:
    """A log whose gpt-4o-mini calls a price file priced (a negotiated rate), asked "what if gpt-4o were
    gpt-4.1-mini" without that file: the lens that stays on gpt-4o-mini changes too, at the list price;
    a note under the table says why and how to keep the recorded rates, so the what-if is not misread."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: 1\nmodels:\n  gpt-4o-mini: {input: 0.30, output: 1.20}\n")
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(
        logger=None, sinks=[handler.write_record], prices=llm_ledger.PriceTable.from_file(prices)
    )
    client = sdk(monitor)
    for lens, model in (("summary", "gpt-4o-mini"), ("summary", "gpt-4o-mini"), ("deep_dive", "gpt-4o")):
        with monitor.lens(lens):
            client.chat.completions.create(model=model, messages=HI)
    handler.close()
    what_if = ["reprice", str(path), "--model", "gpt-4o=gpt-4.1-mini"]
    assert main(what_if) == 0
    out = capsys.readouterr().out
    assert (
        "* after prices 2 calls from genai-prices that a price file priced when made (cost.source "
        '"price-file"): pass that file (--price-file) to keep their rates' in out
    )
    summary = by_lens(reprice_json(capsys, *what_if[1:]))["summary"]
    assert summary["after_usd"] < summary["before_usd"]  # the list price, half the negotiated one
    assert main([*what_if, "--price-file", str(prices)]) == 0
    out = capsys.readouterr().out
    assert "price file priced" not in out
    summary = by_lens(reprice_json(capsys, *what_if[1:], "--price-file", str(prices)))["summary"]
    assert summary["after_usd"] == summary["before_usd"]


@pytest.mark.parametrize("filtered", [False, True])
def test_repricing_a_long_log_holds_no_call_in_memory(
    capsys: pytest.CaptureFixture[str],
    recorded: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    filtered: bool,
) -> None:
    """A month of logs is millions of calls: reprice streams them as report does, so its memory stays
    flat whatever the log's length (it held every call read, about 1 KB each: 660 MB for a million)."""
    path, _ = recorded
    lines = path.read_bytes().splitlines(keepends=True)
    long = tmp_path / "long.jsonl"
    # 6,000 calls as the ledger wrote them: held, even as their bytes alone, they would pass the bound
    # below (about 7 MiB of lines, 70 MiB parsed); streamed, the peak is under 1 MiB at any length
    long.write_bytes(b"".join(lines) * 1000)
    selection = ["--where", "lens=summary", "--since", "2020-01-01"] if filtered else []
    tracemalloc.start()
    try:
        assert main(["reprice", str(long), "--model", "gpt-4o=gpt-4.1-mini", *selection]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.search(r"^summary +2,000 ", capsys.readouterr().out, re.M)  # its calls, all read
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB"
