"""The one loader behind price files, budgets.yaml and cassettes: one number parser, one error shape."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

import llm_ledger
from llm_ledger import (
    BudgetError,
    CassetteError,
    ConfigError,
    Limits,
    PriceFileError,
    PriceTable,
    load_budgets,
)
from llm_ledger._cli import main
from llm_ledger.loading import MAX_BYTES, Document, JsonLoader, did_you_mean
from pytest_llm_ledger._format import MAX_CASSETTE_BYTES, body_bytes, load_cassette

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3
DOT_ENV = f'OPENAI_API_KEY={SECRET}\nexport OTHER_TOKEN="{SECRET}"\n'
SHADOW = "root:$6$saltsalt$" + "x" * 86 + ":19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n"
LOCKED_SHADOW = "root:*:20228:0:99999:7:::\n"  # reads as a mapping with one key
PASSWD = "root:x:0:0:root:/root:/bin/bash\n"


def load_prices(path: Path) -> object:
    return PriceTable.from_file(path, builtin=False)


def load_limits(path: Path) -> object:
    return load_budgets(path)


LOADERS: dict[str, tuple[Callable[[Path], object], type[ConfigError]]] = {
    "price file": (load_prices, PriceFileError),
    "budgets file": (load_limits, BudgetError),
}


def test_exponent_numbers_mean_the_same_in_prices_and_budgets(tmp_path: Path) -> None:
    """1e-3 is a price and a cost budget alike; 1e3 is a whole number of calls."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: 1\nmodels:\n  m: {input: 1e-3, output: 2.5E+1}\n", encoding="utf-8")
    rates = PriceTable.from_file(prices, builtin=False).rates("m")
    assert rates is not None and (rates.input, rates.output) == (Decimal("0.001"), Decimal(25))

    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("total: {max_cost_usd: 1e-3, max_api_calls: 1e3, max_total_tokens: 1_000}\n")
    assert load_budgets(budgets).total == Limits(
        max_cost_usd=0.001, max_api_calls=1000, max_total_tokens=1000
    )


# YAML 1.1 numbers a reader would not read as the file's value (PyYAML would: 1:30 is 90, 010 is 8)
SURPRISING = {
    "1:30": "90 (base 60)",
    "1:30.5": "90.5 (base 60)",
    "0x10": "16 (hexadecimal)",
    "010": "8 (octal)",
    "0b11": "3 (binary)",
}


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("written", SURPRISING)
def test_yaml_1_1_numbers_that_read_as_another_value_are_errors(
    tmp_path: Path, kind: str, written: str
) -> None:
    """A sexagesimal, hexadecimal, octal or binary number in a budget or a price is an error at its line
    and key path saying what YAML 1.1 would make of it, not a limit or a rate of that value."""
    load, error = LOADERS[kind]
    path = tmp_path / "numbers.yaml"
    if kind == "price file":
        path.write_text(f"version: 1\nmodels:\n  m:\n    input: 1\n    output: {written}\n")
        where = f"{path}:5: models.m.output"
    else:
        path.write_text(f"lenses:\n  digest:\n    max_api_calls: 2\n    max_total_tokens: {written}\n")
        where = f"{path}:4: lenses.digest.max_total_tokens"
    with pytest.raises(error) as excinfo:
        load(path)
    assert str(excinfo.value) == (
        f"{where}: {written} is not a plain decimal number: YAML 1.1 reads it as {SURPRISING[written]}; "
        "write the number in decimal digits (e.g. 90, 0.5, 1e-3)"
    )


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize(
    "text",
    [DOT_ENV, SHADOW, LOCKED_SHADOW, PASSWD, f"models: {{m: {{input: {SECRET}}}}}\n", f"{SECRET[:20]}: 1\n"],
    ids=["env", "shadow", "locked-shadow", "passwd", "value", "key"],
)
def test_errors_never_quote_credential_looking_content(tmp_path: Path, kind: str, text: str) -> None:
    """A .env or /etc/shadow given as a config file is refused without printing what it holds; a key
    that looks like an API key is not quoted either."""
    load, error = LOADERS[kind]
    path = tmp_path / "wrong.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error) as excinfo:
        load(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}:1: ")
    for fragment in ("sk-proj", "A1b2C3", "$6$", "saltsalt", "root:", "20228", "/bin/bash"):
        assert fragment not in message, message


@pytest.mark.parametrize("kind", LOADERS)
def test_bad_values_are_quoted_short(tmp_path: Path, kind: str) -> None:
    """A long bad value is shortened in the message, not printed whole."""
    load, error = LOADERS[kind]
    path = tmp_path / "long.yaml"
    start = (
        "version: 1\nmodels:\n  m: {input: 1, output: " if kind == "price file" else "total: {max_api_calls: "
    )
    path.write_text(start + "ab " * 500 + "}\n", encoding="utf-8")
    with pytest.raises(error, match=r"expected a non-negative .*, got 'ab ab ab.*…$") as excinfo:
        load(path)
    assert len(str(excinfo.value)) < len(str(path)) + 200


@pytest.mark.parametrize(
    "secret",
    [
        "$1$saltsalt$hashhash",  # a crypt(3) password hash, from /etc/shadow
        "postgres://admin:s3cret@db/prod",  # a URL with its password, from a .env's DATABASE_URL
        "SMTP_PASS=hunter2",  # a .env line naming a password
        "DB_PWD=hunter2",
    ],
)
@pytest.mark.parametrize("kind", LOADERS)
def test_a_value_like_a_password_is_described_not_quoted(tmp_path: Path, kind: str, secret: str) -> None:
    """A password given as a value (a hash from /etc/shadow, a URL's or a .env line's) is named by its
    length, never quoted."""
    load, error = LOADERS[kind]
    path = tmp_path / "secret.yaml"
    start = (
        "version: 1\nmodels:\n  m: {input: 1, output: " if kind == "price file" else "total: {max_api_calls: "
    )
    path.write_text(f"{start}'{secret}'}}\n", encoding="utf-8")
    shown = rf"got <{len(secret)} characters not shown: they look like a credential>$"
    with pytest.raises(error, match=shown):
        load(path)


@pytest.mark.parametrize("kind", LOADERS)
def test_devices_fifos_and_directories_are_refused_unread(tmp_path: Path, kind: str) -> None:
    """/dev/zero, a FIFO (with no writer: reading would hang) and a directory each get a clear error."""
    load, error = LOADERS[kind]
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, message in ((Path("/dev/zero"), "is not a regular file"), (fifo, "is not a regular file"),
                          (tmp_path, "is a directory")):  # fmt: skip
        with pytest.raises(error, match=f"^{path}: {message}.*expected a {kind}$"):
            load(path)


@pytest.mark.parametrize("kind", LOADERS)
def test_oversized_files_are_refused(tmp_path: Path, kind: str) -> None:
    """A file over the size cap is refused before it is parsed."""
    load, error = LOADERS[kind]
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(error, match=f"is over {MAX_BYTES:,} bytes, too big for a {kind}$"):
        load(path)


def test_missing_required_keys_name_the_key_and_its_meaning(tmp_path: Path) -> None:
    """Errors share one shape: file:line: key.path: what is wrong."""
    path = tmp_path / "prices.yaml"
    path.write_text("version: 1\nmodels:\n  m: {input: 1}\n", encoding="utf-8")
    with pytest.raises(PriceFileError, match=r"prices\.yaml:3: models\.m: missing required key 'output'"):
        load_prices(path)


CASSETTE = """version: 1
interactions:
- request:
    method: POST
    url: https://api.openai.com/v1/chat/completions
    json: {{model: gpt-4o, note: {value}}}
  response:
    status: 200
    json: {{id: chatcmpl-1}}
"""


def test_hand_edited_cassette_dates_stay_strings(tmp_path: Path) -> None:
    """An unquoted date in a hand-edited cassette body is the string it reads as (JSON has no dates)."""
    path = tmp_path / "c.yaml"
    path.write_text(CASSETTE.format(value="2024-01-01"), encoding="utf-8")
    [interaction] = load_cassette(path)
    assert interaction["request"]["body"] == ("json", {"model": "gpt-4o", "note": "2024-01-01"})
    assert json.loads(body_bytes(interaction["request"]["body"]))["note"] == "2024-01-01"


@pytest.mark.parametrize(
    "value", ["!!set {a, b}", "!!binary aGVsbG8=", "!!omap [{a: 1}]", "!!timestamp 2024-01-01"]
)
def test_cassette_tags_json_cannot_hold_are_a_cassette_error(tmp_path: Path, value: str) -> None:
    """!!set, !!binary, !!omap, !!timestamp in a cassette: a CassetteError at the line, not a TypeError."""
    path = tmp_path / "c.yaml"
    path.write_text(CASSETTE.format(value=value), encoding="utf-8")
    tag = value.split()[0]
    with pytest.raises(CassetteError, match=f"c.yaml:6: invalid YAML: .*tag '{tag}' is not allowed"):
        load_cassette(path)


def test_a_cassette_error_in_yaml_is_named_before_a_structure_error(tmp_path: Path) -> None:
    """A key written twice in a later body is named before an earlier wrong status: what is not YAML a
    JSON loader reads comes first, whatever its place in the file."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "version: 1\ninteractions:\n"
        "- request: {method: GET, url: 'http://x'}\n  response: {status: 99}\n"
        "- request: {method: GET, url: 'http://x'}\n  response:\n    status: 200\n"
        "    json: {usage: {total_tokens: 1, total_tokens: 2}}\n",
        encoding="utf-8",
    )
    with pytest.raises(
        CassetteError, match=r"c.yaml:8: invalid YAML: duplicate key 'total_tokens' \(first on line 8\)"
    ):
        load_cassette(path)


def test_a_document_reads_a_free_form_value_as_json_does() -> None:
    """With ``loader=JsonLoader`` an unquoted date stays a string; ``value()`` builds a free-form value."""
    doc = Document("f.yaml", ConfigError, "a file", loader=JsonLoader)
    root = doc.compose("meta: {when: 2024-01-01, tags: [a, 1, 2.5, null, true]}\n")
    assert root is not None
    [(_, _, node)] = doc.mapping(root, "", "a mapping")
    assert doc.value(node) == {"when": "2024-01-01", "tags": ["a", 1, 2.5, None, True]}


def test_a_document_reads_plain_exponent_numbers_whichever_parser_composed_it() -> None:
    """``1e-3`` unquoted is a number with libyaml's parser (JsonLoader's) as with PyYAML's; quoted, not."""
    doc = Document("f.yaml", ConfigError, "a file", loader=JsonLoader)
    root = doc.compose("plain: 1e-3\nquoted: '1e-3'\n")
    assert root is not None
    (_, _, plain), (_, _, quoted) = doc.mapping(root, "", "a mapping")
    assert doc.number(plain, "plain", "a number", maximum=Decimal(1)) == Decimal("0.001")
    with pytest.raises(ConfigError, match=r"^f.yaml:2: quoted: expected a number, got '1e-3'$"):
        doc.number(quoted, "quoted", "a number", maximum=Decimal(1))


def test_oversized_and_device_cassettes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cassette past the size cap, or /dev/zero given to scrub, is refused after a bounded read."""
    path = tmp_path / "big.yaml"
    with path.open("wb") as file:
        file.truncate(MAX_CASSETTE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(CassetteError, match=f"is over {MAX_CASSETTE_BYTES:,} bytes, too big for a cassette"):
        load_cassette(path)
    assert main(["scrub", "/dev/zero"]) == 2
    assert "/dev/zero: is not a regular file" in capsys.readouterr().err


def test_price_file_from_the_environment_never_prints_a_dot_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM_LEDGER_PRICE_FILE pointing at a .env: configure() refuses it without printing the key."""
    path = tmp_path / ".env"
    path.write_text(DOT_ENV, encoding="utf-8")
    monkeypatch.setenv("LLM_LEDGER_PRICE_FILE", str(path))
    with pytest.raises(PriceFileError, match=r"got a string of \d+ characters$") as excinfo:
        llm_ledger.configure(log_dir=None)
    assert SECRET not in str(excinfo.value) and "sk-proj" not in str(excinfo.value)


def test_aliases_that_repeat_a_long_list_in_many_entries_are_refused_not_read_for_minutes(
    tmp_path: Path,
) -> None:
    """A price file whose aliases (*name) repeat a list of 500 tiers in 2,000 models reads as a
    million entries from 140 kB (minutes of checking): an error naming the aliases, once the entries
    read pass what a file of its size holds. An alias reused for a few entries still reads."""
    tiers = ", ".join(f"{{above: {above}, input: 1, output: 1}}" for above in range(1, 501))
    lines = ["version: 1", "models:", f"  m0: {{input: 1, output: 1, long_context: &tiers [{tiers}]}}"]
    lines += [f"  m{number}: {{input: 1, output: 1, long_context: *tiers}}" for number in range(1, 2000)]
    path = tmp_path / "prices.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PriceFileError) as excinfo:
        load_prices(path)
    assert re.fullmatch(
        r".*prices\.yaml:3: models\.m\d+\.long_context(\[\d+\])?: the file's YAML aliases \(\*name\) "
        r"repeat more entries than a price file of its size holds; write the repeated entries out, or "
        r"alias fewer of them",
        str(excinfo.value),
    )
    path.write_text("version: 1\nmodels:\n  a: &rates {input: 1, output: 2}\n  b: *rates\n  c: *rates\n")
    cost = PriceTable.from_file(path, builtin=False).cost("c", prompt_tokens=10**6, completion_tokens=0)
    assert cost is not None and cost.total_cost_usd == 1


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("image_input", "input_image"),
        ("cached_audio_input", "cached_input_audio"),
        ("input_cached_image", "cached_input_image"),
        ("audio_output", "output_audio"),
    ],
)
def test_a_rate_key_with_its_words_in_another_order_suggests_that_key(
    tmp_path: Path, written: str, meant: str
) -> None:
    """A price file's rate key written with its words in another order is pointed at the key of those
    words, not at the one that merely spells closer (image_input is input_image, not cached_input)."""
    path = tmp_path / "prices.yaml"
    path.write_text(f"version: 1\nmodels:\n  m: {{input: 1, output: 2, {written}: 1}}\n")
    with pytest.raises(PriceFileError) as excinfo:
        load_prices(path)
    assert f"models.m.{written}: unknown key (did you mean {meant!r}?)" in str(excinfo.value)


def test_did_you_mean_names_the_closest_choice_or_nothing() -> None:
    """The one "did you mean" hint of every message: the closest choice (or n, closest first) quoted,
    "" when none is close."""
    assert did_you_mean("usr_id", ["source_id", "user_id", "lens"]) == " (did you mean 'user_id'?)"
    assert did_you_mean("zzz", ["user_id", "lens"]) == ""
    assert did_you_mean("grok", iter(["openai", "groq"])) == " (did you mean 'groq'?)"
    models = ["gpt-4.1-mini", "gpt-4o-mini", "gpt-5.4-mini", "o3"]
    assert did_you_mean("gpt-4-mini", models, n=3) == (
        " (did you mean 'gpt-4o-mini' or 'gpt-5.4-mini' or 'gpt-4.1-mini'?)"  # closest first
    )
