"""`llm-ledger diff --fail-on-increase`: what fails the job (a lens over the threshold, a new lens
that costs money, the total or the calls outside any lens over it), and the structured increases
in the JSON that the text and the exit message are rendered from."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llm_ledger._cli import main as cli_main

pytestmark = pytest.mark.sdk_independent


def lens(runs: int, cost: float, calls: int = 1, tokens: int = 10, **extra: Any) -> dict[str, Any]:
    return {"runs": runs, "api_calls": calls, "total_tokens": tokens, "cost_usd": cost, "errors": 0, **extra}


def report(lenses: dict[str, dict[str, Any]], usage: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A report whose total adds up its lenses and its calls outside any lens (``usage`` rows of
    lens "<no lens>")."""
    outside = [row for row in usage or () if row["lens"] == "<no lens>"]
    total = {
        "api_calls": sum(e["api_calls"] for e in lenses.values()) + sum(r["calls"] for r in outside),
        "total_tokens": sum(e["total_tokens"] for e in lenses.values())
        + sum(r["prompt_tokens"] + r["completion_tokens"] for r in outside),
        "cost_usd": round(
            sum(e["cost_usd"] for e in lenses.values()) + sum(r["cost_usd"] for r in outside), 12
        ),
        "errors": sum(e["errors"] for e in lenses.values()),
    }
    return {
        "schema": "llm-ledger-report",
        "version": 1,
        "lenses": lenses,
        "tests": {},
        "total": total,
        "usage": usage or [],
    }


def unlensed(calls: int, cost: float, **extra: Any) -> dict[str, Any]:
    """A usage row of calls made outside any lens."""
    return {
        "lens": "<no lens>",
        "model": "gpt-4o-mini",
        "calls": calls,
        "prompt_tokens": 8 * calls,
        "completion_tokens": 2 * calls,
        "cost_usd": cost,
        "uncosted_calls": 0,
        "no_usage_calls": 0,
        **extra,
    }


@pytest.fixture
def diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """diff(base, head, *args) -> (exit status, stdout, stderr) of `llm-ledger diff` on those reports."""

    def run(base: dict[str, Any], head: dict[str, Any], *args: str) -> tuple[int, str, str]:
        (tmp_path / "base.json").write_text(json.dumps(base))
        (tmp_path / "head.json").write_text(json.dumps(head))
        capsys.readouterr()
        status = cli_main(["diff", str(tmp_path / "base.json"), str(tmp_path / "head.json"), *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_a_new_lens_that_costs_money_fails_as_an_increase_from_nothing(diff: Any) -> None:
    """A lens absent in the base that costs money is an increase from $0: the job fails, naming it;
    a new lens that costs nothing (all its calls known to be free) does not."""
    base = report({"summary": lens(1, 0.0002)})
    head = report({"summary": lens(1, 0.0002), "fresh": lens(2, 0.0006), "free": lens(1, 0.0)})

    status, out, err = diff(base, head, "--fail-on-increase", "25", "--format", "text")

    assert status == 1
    assert err.splitlines()[-1] == (
        "llm-ledger diff: new lens(es) that cost money (an increase from nothing): fresh ($0.000300 per "
        "run); the total cost grew by more than 25% ($0.000200 -> $0.000800, +300.0%)"
    )
    assert "  fresh (new): cost per run $0.000300, absent in the base" in out.splitlines()
    assert "free" not in err


def test_the_total_growing_past_the_threshold_fails_when_no_lens_did(diff: Any) -> None:
    """A lens run twice as often (a test added, a loop) keeps its cost per run, yet the session costs
    twice as much: the total's increase fails the job, naming it."""
    base = report({"summary": lens(2, 0.0004)})
    head = report({"summary": lens(4, 0.0008)})

    status, out, err = diff(base, head, "--fail-on-increase", "25")

    assert status == 1
    assert err.strip() == (
        "llm-ledger diff: the total cost grew by more than 25% ($0.000400 -> $0.000800, +100.0%)"
    )
    assert "**The total cost grew by more than 25%:**\n\n- Total: $0.000400 -> $0.000800 (+100.0%)" in out


def test_calls_outside_any_lens_that_grew_fail_naming_them(diff: Any) -> None:
    """Calls made outside any lens are compared as their own row: when they cost more than the
    threshold more, the job fails and says they are the cause."""
    base = report({"summary": lens(1, 0.001)}, [unlensed(1, 0.0001)])
    head = report({"summary": lens(1, 0.001)}, [unlensed(2, 0.0002)])

    status, _, err = diff(base, head, "--fail-on-increase", "25")

    assert status == 1
    assert err.strip() == (
        "llm-ledger diff: the cost of calls outside any lens grew by more than 25% ($0.000100 -> $0.000200, "
        "+100.0%)"
    )


def test_within_the_threshold_everything_passes(diff: Any) -> None:
    """A lens, the calls outside lenses and the total each up by 10% pass a 25% threshold; a removed
    lens is a decrease."""
    base = report({"summary": lens(1, 0.001), "gone": lens(1, 0.0001)}, [unlensed(1, 0.0001)])
    head = report({"summary": lens(1, 0.0011)}, [unlensed(1, 0.00011)])

    status, _, err = diff(base, head, "--fail-on-increase", "25")

    assert (status, err) == (0, "")


def test_a_cost_up_by_exactly_the_threshold_passes(diff: Any) -> None:
    """A "more than PCT percent" is read on the figures the diff shows: a cost per run and a total up by
    exactly 10% (0.70 -> 0.77, +10.000000000000002% in floating point) pass --fail-on-increase 10."""
    base = report({"summary": lens(1, 0.7)})
    head = report({"summary": lens(1, 0.77)})

    status, out, err = diff(base, head, "--fail-on-increase", "10", "--format", "json")

    assert (status, err) == (0, "")
    assert json.loads(out)["lenses"]["summary"]["metrics"]["cost_per_run"]["pct"] == 10.0


@pytest.mark.parametrize("given", ["25%", "25 %"])
def test_a_threshold_written_with_a_percent_sign_means_the_same(
    diff: Any, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fail-on-increase 25% is --fail-on-increase 25: a 30% growth fails, a 10% one passes; a sign with
    no number is still refused, naming the value."""
    base = report({"summary": lens(1, 0.001)})

    grown = report({"summary": lens(1, 0.0013)})
    status, _, err = diff(base, grown, "--fail-on-increase", given)
    assert (status, err) == (1, diff(base, grown, "--fail-on-increase", "25")[2])
    assert diff(base, report({"summary": lens(1, 0.0011)}), f"--fail-on-increase={given}")[0] == 0
    with pytest.raises(SystemExit) as refused:
        diff(base, base, "--fail-on-increase", "%")
    assert refused.value.code == 2
    refusal = "argument --fail-on-increase: '%' is not a number (a percentage, e.g. 20)"
    assert refusal in capsys.readouterr().err


def test_a_lens_whose_cost_became_unknown_fails_and_shows_with_only_changed(diff: Any) -> None:
    """A lens with the same figures whose head cost now leaves out a call to a model with no known
    price cannot be checked: --only-changed keeps it, as changed, and --fail-on-increase fails on it."""
    base = report({"local": lens(1, 0.0), "summary": lens(1, 0.0002)})
    gap = {"lens": "local", "model": "acme-7b", "calls": 1, "prompt_tokens": 8, "completion_tokens": 2}
    head = report(
        {"local": lens(1, 0.0, cost_complete=False), "summary": lens(1, 0.0002)},
        [{**gap, "cost_usd": 0.0, "uncosted_calls": 1, "no_usage_calls": 0}],
    )

    status, out, err = diff(base, head, "--only-changed", "--fail-on-increase", "25", "--format", "json")

    assert status == 1
    data = json.loads(out)
    assert list(data["lenses"]) == ["local"] and data["lenses"]["local"]["status"] == "changed"
    assert [(i["lens"], i["reason"]) for i in data["increases"]] == [("local", "unchecked")]
    assert "in local (head: no known price for model 'acme-7b' (1 call))" in err


def test_a_lens_whose_base_cost_was_unknown_cannot_be_checked_not_grown_from_nothing(diff: Any) -> None:
    """The base counted a call to a model with no known price as $0 and the head prices it (a price
    file added): --fail-on-increase said the cost grew "from nothing", though the base's cost was
    unknown, not nothing. It fails closed as cannot be checked, naming the base's model; a head
    cheaper than even the base's known part is a decrease."""
    gap = {"lens": "local", "model": "acme-7b", "calls": 1, "prompt_tokens": 8, "completion_tokens": 2}
    base = report(
        {"local": lens(1, 0.0, cost_complete=False), "cheaper": lens(1, 0.0003, cost_complete=False)},
        [{**gap, "cost_usd": 0.0, "uncosted_calls": 1, "no_usage_calls": 0}],
    )
    head = report({"local": lens(1, 0.0002), "cheaper": lens(1, 0.0001)})

    status, out, err = diff(base, head, "--fail-on-increase", "25", "--format", "json")

    assert status == 1
    increases = json.loads(out)["increases"]
    assert [(i["lens"], i["reason"]) for i in increases if i["scope"] == "lens"] == [("local", "unchecked")]
    assert increases[0]["cost_gaps"] == "base: no known price for model 'acme-7b' (1 call)"
    assert "from nothing" not in err
    assert "in local (base: no known price for model 'acme-7b' (1 call))" in err


def test_a_lens_whose_base_calls_failed_cannot_be_checked_not_grown(diff: Any) -> None:
    """The base's calls of a lens missed their cassette (no answer: no tokens, no cost) and the head's
    were answered (the pull request re-recorded it): --fail-on-increase said its cost grew, measured
    from calls that never got an answer. It fails closed as cannot be checked, saying why."""
    base = report({"summary": lens(1, 0.0001, calls=2, errors=1, tests_with_failed_calls=["t.py::t"])})
    head = report({"summary": lens(1, 0.0002, calls=2)})

    status, out, err = diff(base, head, "--fail-on-increase", "25", "--format", "json")

    assert status == 1
    (increase,) = json.loads(out)["increases"][:1]
    assert (increase["lens"], increase["reason"]) == ("summary", "unchecked")
    why = "base: 1 failed call(s) (cassette misses or API errors), which count no cost"
    assert increase["cost_gaps"] == why
    assert "grew by more than" not in err.split("cannot be checked")[0]


def test_increases_are_structured_in_the_json(diff: Any) -> None:
    """--format json lists each increase with its scope, lens, reason, metric and figures, for tools
    that gate or annotate on them without parsing text."""
    base = report({"summary": lens(1, 0.0002), "local": lens(1, 0.0001)}, [unlensed(1, 0.0001)])
    gap = {"lens": "local", "model": "acme-7b", "calls": 1, "prompt_tokens": 8, "completion_tokens": 2}
    head = report(
        {"summary": lens(1, 0.0004), "local": lens(1, 0.0, cost_complete=False), "fresh": lens(1, 0.0003)},
        [unlensed(1, 0.0001), {**gap, "cost_usd": 0.0, "uncosted_calls": 1, "no_usage_calls": 0}],
    )
    head["total"]["cost_complete"] = False

    status, out, _ = diff(base, head, "--fail-on-increase", "25", "--format", "json")

    assert status == 1
    data = json.loads(out)
    assert data["fail_on_increase"] == 25
    why = "head: no known price for model 'acme-7b' (1 call)"
    assert data["increases"] == [
        {"scope": "lens", "lens": "fresh", "reason": "new", "metric": "cost_per_run", "base": None,
         "head": 0.0003, "pct": None, "cost_gaps": None},
        {"scope": "lens", "lens": "local", "reason": "unchecked", "metric": "cost_per_run", "base": 0.0001,
         "head": 0.0, "pct": -100.0, "cost_gaps": why},
        {"scope": "lens", "lens": "summary", "reason": "grew", "metric": "cost_per_run", "base": 0.0002,
         "head": 0.0004, "pct": 100.0, "cost_gaps": None},
        {"scope": "total", "lens": None, "reason": "unchecked", "metric": "cost_usd", "base": 0.0004,
         "head": 0.0008, "pct": 100.0, "cost_gaps": why},
    ]  # fmt: skip
    assert data["no_lens"]["status"] == "unchanged"


def test_a_lens_named_like_the_messages_is_named_whole_and_marks_nothing(diff: Any) -> None:
    """The exit message and the headings come from the structured increases, not from text: a lens
    whose key reads like a reason neither cuts its own name nor adds "cannot be checked"."""
    odd = "x: cost per run cannot be checked"
    base = report({odd: lens(1, 0.0001)})
    head = report({odd: lens(1, 0.0002)})

    status, out, err = diff(base, head, "--fail-on-increase", "50")

    assert status == 1
    assert "cannot be checked" not in err.replace(odd, "")
    assert f"cost per run grew by more than 50% in {odd!r} (+100.0%)" in err
    assert "**Cost per run grew by more than 50%:**" in out


def test_help_states_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-ledger diff --help` says what --fail-on-increase fails on."""
    with pytest.raises(SystemExit):
        cli_main(["diff", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "exit 1 when a lens's cost per run, the cost of calls outside any lens or the total cost grows "
        "by more than PCT percent, or a lens absent in BASE costs money (an increase from nothing)"
    ) in text


def test_a_base_report_without_usage_rows_does_not_read_as_no_calls_outside_lenses(diff: Any) -> None:
    """A base report written before reports carried usage rows cannot tell what ran outside any
    lens: the head's calls outside lenses are not shown as new, and do not fail the job as growth."""
    base = report({"summary": lens(1, 0.001)}, [unlensed(1, 0.0001)])
    del base["usage"]
    base["total"]["api_calls"] += 1  # the base did make the call: its total counts it
    head = report({"summary": lens(1, 0.001)}, [unlensed(1, 0.0001)])

    status, out, err = diff(base, head, "--fail-on-increase", "25")

    assert (status, err) == (0, "")
    assert "(no lens)" not in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["usage"][0].update(calls="2"), "usage[0].calls: expected a whole number >= 0, got '2'"),
        (lambda r: r["usage"][0].update(cost_usd=-1), "usage[0].cost_usd: expected a number >= 0, got -1"),
        (lambda r: r["usage"].append([]), "usage[1] must be an object"),
        (
            lambda r: r["lenses"]["summary"].update(tests_with_failed_calls="test_x"),
            "lenses.summary.tests_with_failed_calls: expected a list of test ids, got 'test_x'",
        ),
    ],
)
def test_a_report_with_bad_figures_for_the_diff_is_refused_naming_where(
    diff: Any, change: Any, message: str
) -> None:
    """The usage rows the (no lens) row is summed from, and the tests a lens's calls failed in, are
    checked like the rest of a report: a bad one is an error naming its place, not a wrong figure."""
    head = report({"summary": lens(1, 0.001)}, [unlensed(1, 0.0001)])
    change(head)

    status, out, err = diff(report({"summary": lens(1, 0.001)}), head)

    assert (status, out) == (2, "")
    assert message in err


def test_the_exit_message_words_each_increase_as_the_list_does(diff: Any) -> None:
    """The exit message and the list of increases word the same figures alike: calls outside any
    lens absent in the base read "absent in the base" in both (the exit message said "none")."""
    base = report({"summary": lens(1, 0.0002)})
    head = report({"summary": lens(1, 0.0004)}, [unlensed(1, 0.0001)])

    status, out, err = diff(base, head, "--fail-on-increase", "25", "--format", "text")

    assert status == 1
    assert "  (no lens) (new): $0.000100, absent in the base" in out.splitlines()
    assert "  summary: cost per run $0.000200 -> $0.000400 (+100.0%)" in out.splitlines()
    assert err == (
        "llm-ledger diff: cost per run grew by more than 25% in summary (+100.0%); the cost of calls "
        "outside any lens grew by more than 25% ($0.000100, absent in the base); the total cost grew by "
        "more than 25% ($0.000200 -> $0.000500, +150.0%)\n"
    )


@pytest.mark.parametrize("side", ["base", "head"])
def test_a_report_given_as_dash_is_read_from_stdin(
    side: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llm-ledger diff - head.json` (`-` is stdin, as for --logs and `llm-ledger report`) read a file
    named `-`: a base then read as missing, every lens new and nothing compared; a head as "not found;
    write one with `pytest --llm-report=-`". Either side reads the report from stdin."""
    base, head = report({"summary": lens(1, 0.001)}), report({"summary": lens(1, 0.002)})
    (tmp_path / "other.json").write_text(json.dumps(head if side == "base" else base))
    piped = json.dumps(base if side == "base" else head).encode()
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(piped)))
    args = ["-", str(tmp_path / "other.json")] if side == "base" else [str(tmp_path / "other.json"), "-"]

    status = cli_main(["diff", *args, "--fail-on-increase=10", "--format=json"])

    out, err = capsys.readouterr()
    assert status == 1, err
    assert json.loads(out)["lenses"]["summary"]["metrics"]["cost_usd"]["pct"] == 100.0


@pytest.mark.parametrize("logs", [[], ["--logs"]])
def test_both_sides_dash_is_an_error_naming_stdin(
    logs: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llm-ledger diff - -`: stdin can be read once. With --logs the second read was a traceback
    (`peek of closed file`); a report suggested `pytest --llm-report=-`. Both are an error saying so."""
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(b"")))

    status = cli_main(["diff", *logs, "-", "-"])

    assert (status, capsys.readouterr()) == (
        2,
        ("", "llm-ledger diff: error: BASE and HEAD are both - (stdin), which can be read once; give one "
         "of them as a file\n"),
    )  # fmt: skip


def test_only_changed_leaves_out_no_lens_that_cannot_be_checked(diff: Any) -> None:
    """A lens whose figures stayed while one of its head runs was cut short reads unchanged, and
    --only-changed (the CI recipe's) dropped it before --fail-on-increase looked: the run passed on a cost
    per run that can hide an increase, which the same diff without --only-changed fails as unchecked."""
    base, head = report({"summary": lens(2, 0.002)}), report({"summary": lens(2, 0.002, cut_short_runs=1)})

    for args in ([], ["--only-changed"]):
        status, out, err = diff(base, head, "--fail-on-increase=10", *args)
        assert status == 1, args
        assert "cost cannot be checked in summary (head: 1 of 2 runs cut short" in err
        assert "| `summary` (unchanged; cut short) |" in out
    assert (
        "1 lens(es), 0 with changes (only those are shown, and those whose cost could not be checked)." in out
    )
