"""The pull-request recipe of docs/CI.md, run as written on two git worktrees of a sample project, offline.

The steps come from that workflow YAML and run in order under ``bash -eo pipefail`` as
GitHub runs them (``continue-on-error`` and ``if: always()`` honoured); ``uses:`` steps are played
by the test (a clone of the sample repository, an interpreter of its own). No step reaches a
network: pip is told ``--no-index --no-deps`` and finds the dependencies through ``PYTHONPATH``;
cassettes are recorded beforehand against the loopback server, which is stopped before the recipe
runs; ``gh`` is a stub that keeps the comment it was asked to post. The base step, the same for
every pull request, runs once for the module: both pull requests are diffed against its report.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_ledger.testing import FakeOpenAI

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parent.parent

# an in-tree PEP 517 backend: pip builds the sample offline, with nothing to download
BACKEND = """
import base64, hashlib, os, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = "sample_app-0.1"
METADATA = "Metadata-Version: 2.1\\nName: sample-app\\nVersion: 0.1\\nProvides-Extra: dev\\n"
WHEEL = "Wheel-Version: 1.0\\nGenerator: sample\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"


def _wheel(directory, files):
    name = DIST + "-py3-none-any.whl"
    files = [*files, (DIST + ".dist-info/METADATA", METADATA.encode())]
    files.append((DIST + ".dist-info/WHEEL", WHEEL.encode()))
    record = []
    with zipfile.ZipFile(os.path.join(directory, name), "w") as whl:
        for arc, data in files:
            whl.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(DIST + ".dist-info/RECORD,,")
        whl.writestr(DIST + ".dist-info/RECORD", "\\n".join(record) + "\\n")
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    src = ROOT / "src"
    files = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in src.rglob("*.py")]
    return _wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, [("sample_app.pth", f"{ROOT / 'src'}\\n".encode())])
"""

PYPROJECT = """
[build-system]
requires = []
build-backend = "sample_backend"
backend-path = ["_build"]

[project]
name = "sample-app"
version = "0.1"
optional-dependencies = {dev = ["llm-ledger", "pytest"]}
"""

APP = """
import openai

import llm_ledger as ledger

PROMPT = {prompt!r}


def triage(ticket):
    client = ledger.instrument(openai.OpenAI(max_retries=0))  # OPENAI_BASE_URL when recording
    with client, ledger.lens("triage", source_id=ticket):
        answers = []
        for prompt in PROMPT:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{{"role": "user", "content": prompt + ticket}}]
            )
            answers.append(reply.choices[0].message.content)
    return answers
"""

TESTS = """
import pytest

from sample_app import triage


@pytest.mark.llm
def test_triage():
    assert all(answer.startswith("Summary:") for answer in triage("the printer is on fire"))
"""

FILES = {
    "pyproject.toml": PYPROJECT,
    "_build/sample_backend.py": BACKEND,
    "pytest.ini": "[pytest]\naddopts = -p no:hypothesispytest -p no:anyio\nfilterwarnings = error\n"
    "asyncio_default_fixture_loop_scope = function\n",
    "budgets.yaml": "default: {max_cost_usd: 0.01}\n",
    "tests/test_triage.py": TESTS,
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def write_version(repo: Path, prompts: list[str]) -> None:
    """The sample project, its app asking these prompts."""
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(textwrap.dedent(text).lstrip())
    app = repo / "src" / "sample_app" / "__init__.py"
    app.parent.mkdir(parents=True, exist_ok=True)
    app.write_text(APP.format(prompt=prompts))


def record(server: FakeOpenAI, modes: dict[Path, str]) -> None:
    """Record each project's cassettes against the loopback server, in that record mode: a pytest
    session each, run in this process as pytester's are, with that project's src/ on the path, no
    key and ``OPENAI_BASE_URL`` set; its modules and paths forgotten after its run."""
    path = list(sys.path)
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(("OPENAI_", "PYTEST_"))]:
            patch.delenv(name)
        patch.setenv("OPENAI_BASE_URL", server.base_url)
        gc.freeze()  # each session's final collection scans its own objects, not this whole process
        try:
            for repo, mode in modes.items():
                patch.chdir(repo)
                sys.path.insert(0, str(repo / "src"))
                code = pytest.main([f"--llm-record-mode={mode}", "-p", "no:cacheprovider"])
                assert code == 0, f"recording in {repo} exited {code}"
                sys.path[:] = path
                for name, module in list(sys.modules.items()):
                    if (getattr(module, "__file__", None) or "").startswith(f"{repo}{os.sep}"):
                        del sys.modules[name]
        finally:
            gc.unfreeze()


def readme_workflow() -> dict[str, Any]:
    readme = (REPO / "docs" / "CI.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if b.startswith("# .github/workflows/llm-ledger.yml")]
    workflow: dict[str, Any] = yaml.safe_load(block)
    return workflow


def run_steps(
    steps: list[dict[str, Any]], cwd: Path, env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run the ``run:`` steps as a GitHub runner does: a failed step skips the rest but ``if: always()``."""
    results = []
    failed = False
    for step in steps:
        if "run" not in step or (failed and step.get("if") != "always()"):
            continue
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        results.append(done)
        failed = failed or (done.returncode != 0 and not step.get("continue-on-error"))
    return results


# the jq filter the recipe gives `gh api` to find its own comment (gh evaluates it; the stub below
# does the same in Python, and refuses any other filter so the two cannot drift apart)
OWN_COMMENT = '.[] | select(.body | startswith("## llm-ledger: cost diff")) | .id'
# gh, as far as the recipe uses it; the pull request's comments are a JSON list in $GH_COMMENTS
GH_POSTS = f"""#!/usr/bin/env python3
import json, os, sys

args = sys.argv[1:]
with open(os.environ["GH_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
with open(os.environ["GH_COMMENTS"]) as file:
    comments = json.load(file)
if args[:3] == ["pr", "comment", "7"]:
    body = open(args[args.index("--body-file") + 1]).read()
    if "--edit-last" in args:  # the last comment of the token's user: any workflow's, as gh does
        mine = [c for c in comments if c["user"] == "github-actions[bot]"]
        if not mine:
            sys.exit("no comments found for current user")
        mine[-1]["body"] = body
    else:
        comments.append({{"id": 100 + len(comments), "user": "github-actions[bot]", "body": body}})
elif args[:2] == ["api", "repos/acme/app/issues/7/comments"] and "--paginate" in args:
    if args[args.index("--jq") + 1] != {OWN_COMMENT!r}:
        sys.exit("gh stub: unexpected --jq filter " + args[args.index("--jq") + 1])
    print("\\n".join(str(c["id"]) for c in comments if c["body"].startswith("## llm-ledger: cost diff")))
elif args[:3] == ["api", "--method", "PATCH"] and args[4] == "-F" and args[5].startswith("body=@"):
    (comment,) = [c for c in comments if args[3] == f"repos/acme/app/issues/comments/{{c['id']}}"]
    comment["body"] = open(args[5].removeprefix("body=@")).read()
else:
    sys.exit("gh stub: unexpected arguments " + repr(args))
with open(os.environ["GH_COMMENTS"], "w") as file:
    json.dump(comments, file)
"""
# a pull request from a fork: its token cannot write to the base repository
GH_READ_ONLY = (
    '#!/bin/sh\necho "$@" >> "$GH_LOG"\necho "HTTP 403: Resource not accessible by integration" >&2\nexit 1\n'
)
# another workflow's comment, posted as the same github-actions bot, before and after this job's
OTHER_BOT = {"user": "github-actions[bot]", "body": "## Coverage\n\n91% of lines"}


# the pull requests' branches: the prompts of their version of the sample app
HEADS = {
    "two-calls": ["Summarise briefly: ", "Label: "],  # a changed prompt and one more call
    "one-call": ["Summarise briefly: "],  # a changed prompt only
}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's repository: a main branch, and a branch of HEADS for each pull request, each
    version's cassettes recorded (once for the module: the recordings are pytest runs)."""
    origin = tmp_path_factory.mktemp("sample")
    write_version(origin, ["Summarise: "])
    heads = {branch: tmp_path_factory.mktemp(branch) for branch in HEADS}
    for branch, prompts in HEADS.items():
        write_version(heads[branch], prompts)
    with FakeOpenAI() as server:
        record(server, {origin: "once", **{head: "rewrite" for head in heads.values()}})
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "base")
    for branch, head in heads.items():  # each head's code and its cassettes on a branch from main
        git(origin, "checkout", "-q", "-b", branch, "main")
        for tree in ("src", "cassettes"):
            shutil.rmtree(origin / tree)
            shutil.copytree(head / tree, origin / tree)
        git(origin, "add", "-A")
        git(origin, "commit", "-q", "-m", "head")
    return origin


def runner(tmp_path: Path, origin: Path, branch: str, gh: str = GH_POSTS) -> tuple[Path, dict[str, str]]:
    """A runner's checkout (``ci/head``) of the pull request from ``branch`` of ``origin`` to its main,
    with ``gh`` as that script; returns the checkout and the steps' environment."""
    head = tmp_path / "ci" / "head"  # the runner's checkout of the pull request
    git(tmp_path, "clone", "-q", "--branch", branch, str(origin), str(head))

    runner = tmp_path / "runner"  # setup-python: an interpreter whose installs land outside this suite
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(runner)], check=True)
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "gh").write_text(gh)
    (stub / "gh").chmod(0o755)
    workflow = readme_workflow()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTEST_", "PIP_"))}
    env |= {
        **{k: v for k, v in workflow["jobs"]["lenses"]["env"].items() if "${{" not in v},
        "BASE_REF": "main",
        "PR_NUMBER": "7",
        "GH_LOG": str(tmp_path / "gh.log"),
        "GH_COMMENTS": str(tmp_path / "gh-comments.json"),
        "GITHUB_REPOSITORY": "acme/app",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "PATH": os.pathsep.join([str(runner / "bin"), str(stub), env["PATH"]]),
        # the dependencies (openai, pytest, llm-ledger) as installed for this suite; pip offline
        "PYTHONPATH": os.pathsep.join([sysconfig.get_paths()["purelib"], str(REPO)]),
        "PIP_NO_INDEX": "1",
        "PIP_NO_DEPS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",  # anything that tried the network would fail here
    }
    return head, env


def recipe_steps() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The recipe's base step (the base's report, ``../base.json``) and the steps after it."""
    base, *rest = [step for step in readme_workflow()["jobs"]["lenses"]["steps"] if "run" in step]
    # it continues on error: the steps after it run whatever it did, so they can start from its report
    assert "../base.json" in base["run"] and base["continue-on-error"] is True, base
    return base, rest


# a runner's directory, its checkout, the steps' environment, and the base step's run
AfterBase = tuple[Path, Path, dict[str, str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def after_base(tmp_path_factory: pytest.TempPathFactory, origin: Path) -> AfterBase:
    """A runner of the pull request from ``two-calls`` after the recipe's base step; returns its
    directory, checkout, environment and the step's run. Once for the module: the base step does the
    same whatever the pull request, and a fork's pull request is diffed against the report it wrote."""
    tmp_path = tmp_path_factory.mktemp("two-calls-runner")
    head, env = runner(tmp_path, origin, "two-calls")
    (base_run,) = run_steps([recipe_steps()[0]], head, env)
    return tmp_path, head, env, base_run


def test_readme_pr_recipe_diffs_the_base_branchs_own_code(after_base: AfterBase) -> None:
    """Base and head (changed prompt, one more call) replay offline; the base runs its own code, the
    diff flags nothing, names the lens whose cost per run grew, and that diff is the posted comment;
    the next push edits that comment, never another workflow's comment posted since by the same bot."""
    tmp_path, head, env, base_run = after_base
    comments = tmp_path / "gh-comments.json"  # the pull request's: another bot's first
    comments.write_text(json.dumps([{"id": 1, **OTHER_BOT}]))
    (tmp_path / "summary.md").write_text("")  # the module's runner: another test's steps wrote there
    head_run, diff_run = run_steps(recipe_steps()[1], head, env)

    assert base_run.returncode == 0 and "::warning::" not in base_run.stdout, (
        base_run.stdout + base_run.stderr
    )
    assert head_run.returncode == 0, head_run.stdout + head_run.stderr
    base = json.loads((tmp_path / "ci" / "base.json").read_text())
    # had the base imported the head's code, its changed prompt would have missed the base's cassettes
    assert (base["failed_tests"], base["total"]["errors"], base["lenses"]["triage"]["api_calls"]) == (
        [],
        0,
        1,
    )
    assert json.loads((head / "head.json").read_text())["lenses"]["triage"]["api_calls"] == 2

    assert diff_run.returncode == 1, diff_run.stderr
    assert "cost per run grew by more than 25% in triage (" in diff_run.stderr
    other, comment = json.loads(comments.read_text())
    assert other == {"id": 1, **OTHER_BOT}
    assert comment["body"] == (tmp_path / "summary.md").read_text() == (head / "diff.md").read_text()
    assert "Warning" not in comment["body"]  # neither report is flagged
    assert "### `triage`" in comment["body"] and "| calls | 1 | 2 | +1 | +100.0% |" in comment["body"]
    assert "**Cost per run grew by more than 25%:**" in comment["body"]

    # another workflow comments as github-actions too; then the pull request gets another push
    later = {"id": 200, **OTHER_BOT}
    comments.write_text(json.dumps([other, {**comment, "body": "## llm-ledger: cost diff\n\nstale"}, later]))
    (again,) = run_steps([readme_workflow()["jobs"]["lenses"]["steps"][-1]], head, env)
    assert again.returncode == 1, again.stderr
    assert json.loads(comments.read_text()) == [other, comment, later]


def test_readme_pr_recipe_passes_a_fork_whose_token_cannot_comment(
    tmp_path: Path, origin: Path, after_base: AfterBase
) -> None:
    """A pull request from a fork gets a read-only token: the comment fails, but the job's status is
    the diff's (a cost within bounds passes), with a warning saying where the diff is."""
    head, env = runner(tmp_path, origin, "one-call", gh=GH_READ_ONLY)
    (tmp_path / "gh-comments.json").write_text(json.dumps([{"id": 1, **OTHER_BOT}]))
    shutil.copy(after_base[0] / "ci" / "base.json", tmp_path / "ci" / "base.json")  # main's report
    head_run, diff_run = run_steps(recipe_steps()[1], head, env)

    assert head_run.returncode == 0, head_run.stdout + head_run.stderr
    assert (tmp_path / "gh.log").read_text().count("pr comment 7") >= 1
    assert diff_run.returncode == 0, diff_run.stdout + diff_run.stderr
    assert "::warning::could not comment on the pull request" in diff_run.stdout
    assert "### `triage`" in (tmp_path / "summary.md").read_text()


def test_readme_pr_recipe_replaces_the_last_comment_when_there_is_no_diff(after_base: AfterBase) -> None:
    """A push whose head run wrote no report (a usage error stopped it) has no diff: the job fails, and
    the pull request's comment says so rather than keep showing the last push's figures as current."""
    tmp_path, _, env, _ = after_base
    comments = tmp_path / "gh-comments.json"
    earlier = {
        "id": 5,
        "user": "github-actions[bot]",
        "body": "## llm-ledger: cost diff\n\nlast push's figures",
    }
    comments.write_text(json.dumps([earlier]))
    checkout = tmp_path / "ci" / "no-report"  # the head's checkout, where its run wrote no head.json
    checkout.mkdir(exist_ok=True)  # the module's runner: made already when the test runs again (--count)

    (diff_run,) = run_steps([readme_workflow()["jobs"]["lenses"]["steps"][-1]], checkout, env)

    assert diff_run.returncode == 2, diff_run.stdout + diff_run.stderr
    assert "head.json: report not found" in diff_run.stderr
    ((comment),) = json.loads(comments.read_text())
    assert comment["id"] == 5
    assert comment["body"] == (
        "## llm-ledger: cost diff\n\nNo diff for this push: `llm-ledger diff` exited 2; see the job log.\n"
    )
    assert comment["body"] in (tmp_path / "summary.md").read_text()
