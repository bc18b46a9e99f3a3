"""What a reviewer reads in `llm-ledger diff` of two real --llm-report files: a base and a head run
of one project, each recorded against the loopback server and replayed as CI does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger._cli import main as cli_main
from llm_ledger.report import usd
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import run, server_fixture, with_key_fixture, write_project

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

# each lens's model and prompt come from the environment, so one project is the base and the head
LENS_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


def run_lens(lens):
    model = os.environ.get(f"MODEL_{lens.upper()}", "gpt-4o-mini")
    prompt = os.environ.get(f"PROMPT_{lens.upper()}", f"Write the {lens} of the quarterly report")
    client = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    # PRICES: the application prices its calls from its own price file
    monitor = ledger.LLMCallMonitor(prices=os.environ["PRICES"]) if "PRICES" in os.environ else ledger
    with monitor.instrument(client):
        with monitor.lens(lens):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
        if f"UNLENSED_{lens.upper()}" in os.environ:  # one more call, made outside any lens
            unlensed = os.environ[f"UNLENSED_{lens.upper()}"]
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": unlensed}])


@pytest.mark.llm
def test_summary():
    run_lens("summary")


@pytest.mark.llm
def test_tags():
    run_lens("tags")
"""


class Project:
    """An inner project whose lenses' models and prompts change between a base and a head run."""

    def __init__(self, pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch):
        self.pytester, self.server, self.monkeypatch = pytester, server, monkeypatch
        write_project(pytester, LENS_TESTS)

    def report(self, name: str, *args: str, record: bool = True, **env: str) -> str:
        """Record the cassettes (unless ``record`` is false), replay them as CI does, and write
        ``name``: the --llm-report of that replay; ``env`` sets MODEL_<LENS> / PROMPT_<LENS> / PRICES, and
        UNLENSED_<LENS>: the prompt of a call made after the lens, outside any lens."""
        for key in [k for k in os.environ if k.startswith(("MODEL_", "PROMPT_", "PRICES", "UNLENSED_"))]:
            self.monkeypatch.delenv(key)
        for key, value in env.items():
            self.monkeypatch.setenv(key, value)
        if record:
            assert run(self.pytester, "--llm-record-mode=rewrite").ret == 0
        run(self.pytester, f"--llm-report={name}", *args)  # the tests read its report only
        return str(self.pytester.path / name)


@pytest.fixture
def project(
    pytester: pytest.Pytester, server: FakeOpenAI, with_key: None, monkeypatch: pytest.MonkeyPatch
) -> Project:
    return Project(pytester, server, monkeypatch)


def diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # not the inner sessions' output
    status = cli_main(["diff", *args])
    out, err = capsys.readouterr()
    return status, out, err


def section(markdown: str, lens: str) -> str:
    """The part of a Markdown diff about one lens."""
    return markdown.split(f"### `{lens}`")[1].split("\n### ")[0]


def test_a_lens_moved_to_a_model_with_no_known_price_is_not_shown_as_free(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens whose calls now go to a model with no known price shows its cost marked as a lower
    bound, with the model named under that lens, not a plain "$0.000000" that reads as free."""
    base = project.report("base.json")
    head = project.report("head.json", MODEL_TAGS="acme-local-7b")

    status, out, err = diff(capsys, base, head)

    assert status == 0
    tags = section(out, "tags")
    assert "| cost (USD) | $0.00000" in tags and "| $0.000000* |" in tags
    assert "\\* head: no known price for model 'acme-local-7b' (1 call): counted as $0" in tags
    assert "*" not in section(out, "summary").replace("**", "")
    assert (
        f"the head report ({head}) has calls with no known cost in 1 lens(es): tags; their cost (marked *) "
        "leaves them out"
    ) in err


def test_fail_on_increase_fails_closed_on_a_lens_whose_cost_became_unknown(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fail-on-increase cannot tell whether a lens moved to a model with no known price grew: the
    job fails, naming the lens and the model, as a budget that cannot be checked does; not a pass
    on a "-100%" that only means the price is unknown."""
    base = project.report("base.json")
    head = project.report("head.json", MODEL_SUMMARY="acme-local-7b")

    status, out, err = diff(capsys, base, head, "--fail-on-increase", "25")

    assert status == 1
    why = "head: no known price for model 'acme-local-7b' (1 call)"
    assert [line for line in out.splitlines() if line.startswith("- ")] == [
        f"- `summary`: cost per run cannot be checked: {why}",
        f"- Total: cost cannot be checked: {why}",
    ]
    assert err.splitlines()[-1] == (
        f"llm-ledger diff: cost cannot be checked in summary ({why}), the total ({why})"
    )
    # a lens that stays on that model compares like with like: it does not fail every later pull request
    assert diff(capsys, head, head, "--fail-on-increase", "25")[0] == 0


def test_a_lens_whose_calls_missed_their_cassette_says_so_under_its_own_table(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed prompt replayed without re-recording misses its cassette: the lens's tokens and cost
    drop to 0, and its own table says why (failed calls), not only a warning at the top; its name is
    marked, in the Markdown's table of costs per run too, with a line saying its cost per run reads low
    (the run counts, its missed call costs nothing)."""
    base = project.report("base.json")
    head = project.report("head.json", record=False, PROMPT_SUMMARY="Summarise it in three lines")

    status, out, _ = diff(capsys, base, head, "--format", "text")
    markdown = diff(capsys, base, head)[1]

    assert status == 0
    summary = out.split("lens summary (failed calls in head)\n")[1].split("\nlens ")[0]
    assert summary.splitlines()[-1] == (
        "  head: 1 failed call(s) (cassette misses or API errors) in tests/test_app.py::test_summary; one "
        "that got no answer counts no tokens or cost"
    )
    assert "failed call" not in out.split("lens tags")[1].split("\ntotal")[0]
    assert "\ntotal\n" in out  # the total has no cost per run to mark
    note = (
        "failed calls in base / head: calls of the lens failed in that report's run (cassette misses or API "
        "errors); one that got no answer counts no tokens or cost while its lens run still counts, so the "
        "cost per run there reads low"
    )
    assert out.splitlines()[-1] == note
    table = markdown.split("| lens | cost per run")[1].split("\n\n")[0].splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| `summary` (failed calls in head)",
        "| `tags` (unchanged)",
    ]
    assert markdown.split(f"{table[-1]}\n\n")[1].splitlines()[0] == f"_{note}_"  # under the table


def test_a_lens_whose_tests_did_not_run_is_not_passed_off_as_removed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head run that left tests out (-k, a skip, a rename) shows their lenses as removed; the diff
    names the base's tests that made no call in the head, so the reviewer knows the lens may only
    not have run."""
    base = project.report("base.json")
    head = project.report("head.json", "-k", "not tags", record=False)

    status, out, err = diff(capsys, base, head)

    assert status == 0
    assert "### `tags` (removed)" in out
    flag = (
        f"1 test(s) of the base report made no call in the head report ({head}): "
        "{} (not run: deselected, skipped, renamed or deleted; or no call "
        "left); a lens shown as removed may only not have run"
    )
    test = "tests/test_app.py::test_tags"
    assert f"> **Warning:** {flag.replace('{}', f'`{test}`')}" in out  # a code span in Markdown
    assert f"llm-ledger diff: warning: {flag.replace('{}', test)}" in err


def test_report_given_a_pytest_report_says_which_command_reads_it(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-ledger report head.json` on the plugin's --llm-report file is an error that names the
    commands that read it, not an empty table over "136 malformed lines" and exit status 0."""
    head = project.report("head.json")
    capsys.readouterr()

    assert cli_main(["report", head]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        f"llm-ledger report: error: {head}: a pytest --llm-report file, not a log of calls; compare two "
        f"with `llm-ledger diff BASE.json {head}`, or price it again with `llm-ledger reprice {head}`"
    )


def test_the_comment_opens_with_each_lens_cost_per_run_and_what_failed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reviewer sees first, in one table, each lens's cost per run before and after (checked by
    hand from the tokens and the list prices), and the model swap that explains it, then what went over
    --fail-on-increase (the lens, then the total it raised); the per-lens details follow, not the other
    way round."""
    base = project.report("base.json")
    head = project.report("head.json", MODEL_SUMMARY="gpt-4o")

    status, out, _ = diff(capsys, base, head, "--fail-on-increase", "25")

    assert status == 1
    lenses = json.loads(Path(head).read_text())["lenses"]
    summary, tags = lenses["summary"], lenses["tags"]  # one run each; the model changes no token
    total = (
        json.loads(Path(base).read_text())["total"]["cost_usd"],
        json.loads(Path(head).read_text())["total"]["cost_usd"],
    )
    mini = (summary["prompt_tokens"] * 0.15 + summary["completion_tokens"] * 0.6) / 1e6  # USD per 1M
    four = (summary["prompt_tokens"] * 2.5 + summary["completion_tokens"] * 10) / 1e6
    assert summary["cost_usd"] == pytest.approx(four)
    grown = f"{(four / mini - 1) * 100:+.1f}%"
    top = out.split("\n### ")[0].splitlines()
    assert top[top.index("2 lens(es), 1 with changes.") + 1 :] == [
        "",
        "| lens | cost per run: base | head | delta | % |",
        "|---|---:|---:|---:|---:|",
        f"| `summary` (`gpt-4o-mini` -> `gpt-4o`) | {usd(mini)} | {usd(four)} | {usd(four - mini, True)} "
        f"| {grown} |",
        f"| `tags` (unchanged) | {usd(tags['cost_usd'])} | {usd(tags['cost_usd'])} | $0.000000 | 0.0% |",
        "",
        "**Cost per run grew by more than 25%:**",
        "",
        f"- `summary`: cost per run {usd(mini)} -> {usd(four)} ({grown})",
        "",
        "**The total cost grew by more than 25%:**",
        "",
        f"- Total: {usd(total[0])} -> {usd(total[1])} ({(total[1] / total[0] - 1) * 100:+.1f}%)",
    ]
    assert "### `summary` (`gpt-4o-mini` -> `gpt-4o`)\n" in out
    as_json = json.loads(diff(capsys, base, head, "--format", "json")[1])["lenses"]
    assert as_json["summary"]["models"] == {"base": ["gpt-4o-mini"], "head": ["gpt-4o"]}
    assert as_json["tags"]["models"] == {"base": ["gpt-4o-mini"], "head": ["gpt-4o-mini"]}


def test_a_run_stopped_by_a_collection_error_is_flagged_not_read_as_every_lens_removed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head run that a collection error interrupted writes a report with no lens in it; the diff
    says the run stopped early (pytest's exit status and why), not only that every lens went away."""
    base = project.report("base.json")
    (project.pytester.path / "tests" / "test_broken.py").write_text("def test_x(:\n")
    head = project.report("head.json", record=False)

    status, out, err = diff(capsys, base, head)

    assert status == 0
    flag = (
        f"the head run ({head}) stopped early: pytest exit status 2 (interrupted: a collection error, "
        "or Ctrl-C); its report leaves out every test that did not run"
    )
    assert f"> **Warning:** {flag}" in out
    assert f"llm-ledger diff: warning: {flag}" in err


def test_fail_on_increase_fails_closed_on_a_head_run_stopped_early(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head run that a collection error stopped measured nothing: every lens read as removed, a
    decrease, and --fail-on-increase passed (a job that runs the diff apart from the tests went
    green). The total cannot be checked: exit 1, naming the run's exit status."""
    base = project.report("base.json")
    (project.pytester.path / "tests" / "test_broken.py").write_text("def test_x(:\n")
    head = project.report("head.json", record=False)

    status, out, err = diff(capsys, base, head, "--fail-on-increase", "25", "--format", "json")

    assert status == 1
    (increase,) = json.loads(out)["increases"]
    assert (increase["scope"], increase["reason"]) == ("total", "unchecked")
    why = "head: its run stopped early: pytest exit status 2 (interrupted: a collection error, or Ctrl-C)"
    assert increase["cost_gaps"] == why
    assert f"llm-ledger diff: cost cannot be checked in the total ({why})" in err


def test_a_base_run_stopped_early_is_compared_as_no_base_not_as_every_lens_new(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base branch whose run a collection error stopped measured no lens: --fail-on-increase failed
    every pull request on "new lens(es) that cost money". It compares nothing, as with no base report,
    and says why; with --require-base the job fails, naming the base run's exit status."""
    (project.pytester.path / "tests" / "test_broken.py").write_text("def test_x(:\n")
    base = project.report("base.json", record=False)
    (project.pytester.path / "tests" / "test_broken.py").unlink()
    head = project.report("head.json")

    status, out, err = diff(capsys, base, head, "--fail-on-increase", "25")

    assert status == 0, err
    assert "new lens(es) that cost money" not in out + err
    flag = (
        f"the base run ({base}) stopped early, so --fail-on-increase compared nothing: a lens it never "
        "reached would read as new"
    )
    assert flag in out and f"llm-ledger diff: warning: {flag}" in err
    status, out, err = diff(capsys, base, head, "--fail-on-increase", "25", "--require-base")
    assert (status, out) == (2, "")
    assert f"llm-ledger diff: error: {base}: its run stopped early: pytest exit status 2" in err


def test_reports_priced_with_different_price_data_are_flagged(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base priced from a price file and a head from the bundled prices (a PR that drops the file,
    or bumps llm-ledger or genai-prices) differ in cost with no change of tokens: the diff says the
    prices differ, so the reviewer does not hunt for a prompt change."""
    prices = project.pytester.path / "prices.yaml"
    prices.write_text('version: 1\nmodels:\n  "gpt-4o-mini": {input: 1.5, output: 6}\n')
    base = project.report("base.json", PRICES=str(prices))
    head = project.report("head.json", record=False)

    status, out, err = diff(capsys, base, head)

    assert status == 0
    assert "| tokens | 54 | 54 | 0 | 0.0% |" in out.split("### Total")[1]
    sources = {row["cost_source"] for row in json.loads(Path(head).read_text())["usage"]}
    flag = (
        f"the reports were priced with different price data (base: 'price-file'; head: "
        f"{', '.join(map(repr, sorted(sources)))}): a cost may change with no change in tokens; run both "
        "with the same llm-ledger, genai-prices and price file"
    )
    assert f"> **Warning:** {flag}" in out
    assert f"llm-ledger diff: warning: {flag}" in err


def test_require_base_fails_closed_when_the_base_run_wrote_no_report(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the base branch runs llm-ledger, a missing base report means its run broke (an install
    that failed, a crash): with --require-base the diff fails, naming the file and the cause, instead
    of showing every lens as new with a --fail-on-increase that compared nothing."""
    head = project.report("head.json")
    missing = str(project.pytester.path / "base.json")

    assert diff(capsys, missing, head, "--fail-on-increase", "25")[0] == 0  # a first adoption
    status, out, err = diff(capsys, missing, head, "--fail-on-increase", "25", "--require-base")

    assert (status, out) == (2, "")
    assert err.strip() == (
        f"llm-ledger diff: error: {missing}: report not found (--require-base); the base branch's test "
        "run wrote none: see that step's log"
    )


def test_calls_outside_any_lens_have_a_row_of_their_own(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pull request that adds a call outside any lens: the diff shows it as its own "(no lens)"
    row, in the table and with details, so the reviewer sees where the total's growth came from; and
    --fail-on-increase names it."""
    base = project.report("base.json")
    head = project.report("head.json", UNLENSED_TAGS="Classify this ticket as urgent or not")

    status, out, err = diff(capsys, base, head, "--fail-on-increase", "25")

    assert status == 1
    (row,) = [r for r in json.loads(Path(head).read_text())["usage"] if r["lens"] == "<no lens>"]
    cost = usd(row["cost_usd"])
    assert f"| (no lens), its whole cost (new) | — | {cost} | — | — |" in out
    details = out.split("### (no lens): calls outside any lens (new)\n")[1].split("\n### ")[0]
    assert "| calls | — | 1 | — | — |" in details
    assert f"| cost (USD) | — | {cost} | — | — |" in details
    assert "| calls | 2 | 3 | +1 | +50.0% |" in out.split("### Total")[1]
    assert "- (no lens) (new): " + cost + ", absent in the base" in out
    assert err.startswith(
        "llm-ledger diff: the cost of calls outside any lens grew by more than 25% "
        f"({cost}, absent in the base); the total cost grew by more than 25% ("
    )
    # the lenses themselves did not change
    assert "| `summary` (unchanged) |" in out and "| `tags` (unchanged) |" in out


def test_calls_outside_any_lens_compare_base_to_head_in_json(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calls outside any lens in both runs, one with a longer prompt: the JSON diff has them as
    "no_lens", base against head, in calls, tokens and cost."""
    base = project.report("base.json", UNLENSED_SUMMARY="Short")
    head = project.report("head.json", UNLENSED_SUMMARY="A much longer prompt than the base had, and more")

    status, out, _ = diff(capsys, base, head, "--format", "json")

    assert status == 0
    metrics = json.loads(out)["no_lens"]["metrics"]
    rows = [
        next(r for r in json.loads(Path(path).read_text())["usage"] if r["lens"] == "<no lens>")
        for path in (base, head)
    ]
    assert metrics["api_calls"] == {"base": 1, "head": 1, "delta": 0, "pct": 0.0}
    tokens = [r["prompt_tokens"] + r["completion_tokens"] for r in rows]
    assert (metrics["total_tokens"]["base"], metrics["total_tokens"]["head"]) == (tokens[0], tokens[1])
    assert tokens[1] > tokens[0]
    assert (metrics["cost_usd"]["base"], metrics["cost_usd"]["head"]) == (
        rows[0]["cost_usd"],
        rows[1]["cost_usd"],
    )


def test_a_model_swapped_at_the_same_price_shows_with_only_changed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pull request that moves a lens to another model of the same price (a dated snapshot) changes
    no figure, but the model is a change a reviewer must see: --only-changed keeps that lens, with both
    models after its name."""
    base = project.report("base.json")
    head = project.report("head.json", MODEL_TAGS="gpt-4o-mini-2024-07-18")

    status, out, _ = diff(capsys, base, head, "--only-changed")

    assert status == 0
    assert "2 lens(es), 1 with changes (only those are shown)." in out
    assert "### `tags` (`gpt-4o-mini` -> `gpt-4o-mini-2024-07-18`)\n" in out
    assert "| cost per run | " in section(out, "tags") and "`summary`" not in out


def test_the_comment_says_what_the_budgets_found_in_the_head_run(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head run with --llm-budget writes what it found into its report, and the comment shows it
    after the increases: each limit exceeded with its figures and worst run, and each lens that ran
    with no budget (what failed the job, beside the cost diff the reviewer reads), or that every limit
    was met; a head run without --llm-budget shows no budgets."""
    base = project.report("base.json")
    unchecked = project.report("unchecked.json", record=False)
    (project.pytester.path / "budgets.yaml").write_text("lenses:\n  summary: {max_total_tokens: 5}\n")
    head = project.report("head.json", "--llm-budget", record=False)

    status, out, _ = diff(capsys, base, head)

    assert status == 0
    lens = json.loads(Path(head).read_text())["lenses"]["summary"]
    assert out.split("**Budgets")[1].split("\n### ")[0] == (
        " (budgets.yaml) in the head run: 1 limit(s) exceeded, 1 lens(es) with no budget:**\n\n"
        f"- lens `summary`: max_total_tokens 5, actual {lens['total_tokens']} (worst run "
        "`tests/test_app.py::test_summary`)\n"
        "- lens `tags`: no budget (no entry under lenses, no default)\n"
    )
    text = diff(capsys, base, head, "--format", "text")[1]
    assert text.endswith(
        "Budgets (budgets.yaml) in the head run: 1 limit(s) exceeded, 1 lens(es) with no budget:\n"
        f"  lens summary: max_total_tokens 5, actual {lens['total_tokens']} (worst run "
        "tests/test_app.py::test_summary)\n"
        "  lens tags: no budget (no entry under lenses, no default)\n"
    )
    assert json.loads(diff(capsys, base, head, "--format", "json")[1])["budgets"]["no_budget"] == ["tags"]
    assert "Budgets" not in diff(capsys, base, unchecked)[1]
    (project.pytester.path / "budgets.yaml").write_text("default: {max_total_tokens: 1000}\n")
    met = project.report("met.json", "--llm-budget", record=False)
    assert "\n**Budgets (budgets.yaml) in the head run: every limit met.**\n" in diff(capsys, base, met)[1]
