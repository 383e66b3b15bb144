"""Schemathesis against a real ``edgequery serve`` on 127.0.0.1: the served OpenAPI is the contract.

Schemathesis (its CLI, ``python -m schemathesis.cli run``) reads ``/openapi.json`` from the
server and sends requests generated from it — schema-valid ones and deliberately broken
ones (wrong types, missing fields, out-of-range ids, undeclared methods) — with a fixed
seed and a bounded example budget per operation, over loopback only.  A run fails on any
5xx (``not_a_server_error``), a response whose status is not documented for its route
(``status_code_conformance``), a body, content type or header that does not match the
schema, invalid data that is accepted (``negative_data_rejection``), a 405 without the
right ``Allow``, or a write that succeeds without the token (``ignored_auth``).  Left out:
``positive_data_acceptance``, since a schema-valid request may still be refused for a
reason the schema cannot state (an all-zero embedding, bytes that are not an image).

It runs with and without the bearer token: without it every write must be refused with a
documented 401; with it, the writes are exercised too (random ids get deleted: the server
serves a copy of the index).
"""

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

TOKEN = "fuzz-token-0123456789abcdef"
SEED = 14
MAX_EXAMPLES = 400  # per operation: ~2.5k requests a run, 20-45 s on 2 busy cores
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


@pytest.fixture(scope="module")
def server(tiny_index, serve, tmp_path_factory):
    index = tmp_path_factory.mktemp("fuzz") / "index"
    shutil.copytree(tiny_index, index, ignore=shutil.ignore_patterns("*.log", ".lock"))
    s = serve(index, token=TOKEN, log_dir=tmp_path_factory.mktemp("fuzz_logs"))
    yield s
    s.stop()


def schemathesis(url: str, report, max_examples: int, token: str | None) -> dict:
    """One bounded, seeded schemathesis run against ``url``; its JSON report."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--seed", str(SEED),
           "--max-examples", str(max_examples), "--workers", "1", "--phases", "examples,coverage,fuzzing",
           "--generation-database", "none", "--request-timeout", "30", "--no-color",
           *CHECKS, "--report", "json", "--report-json-path", str(report)]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    # cwd: schemathesis keeps a cache (.schemathesis/) in its working directory, not in the repo
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=report.parent)
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    result["output"] = proc.stdout[-6000:]
    result["returncode"] = proc.returncode
    return result


def check_run(server, result: dict, min_cases: int) -> None:
    out = result["output"]
    assert result["returncode"] == 0 and result["exit_code"] == 0, out
    assert result["failures"] == [] and result["errors"] == [], out
    cases = result["test_cases"]
    assert cases["with_failures"] == 0 and cases["errored"] == 0, out
    assert cases["generated"] >= min_cases, (cases, out)
    spec = httpx.get(server.url + "/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert result["operations"]["tested"] == result["operations"]["total"] == operations, out
    assert server.proc.poll() is None
    assert "Traceback" not in server.output() and "Internal Server Error" not in server.output()
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_schemathesis_smoke(server, tmp_path):
    """A small run (~25 examples per operation, no token) in the fast tier."""
    t = time.perf_counter()
    result = schemathesis(server.url, tmp_path / "smoke.json", 25, token=None)
    check_run(server, result, min_cases=100)
    print(f"schemathesis smoke: {result['test_cases']['generated']} cases in {time.perf_counter() - t:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, TOKEN], ids=["anonymous", "with-token"])
def test_schemathesis_finds_no_server_error_or_schema_violation(server, tmp_path, token):
    t = time.perf_counter()
    result = schemathesis(server.url, tmp_path / "report.json", MAX_EXAMPLES, token=token)
    check_run(server, result, min_cases=1500)
    print(f"schemathesis ({'token' if token else 'anonymous'}): {result['test_cases']['generated']} cases in "
          f"{time.perf_counter() - t:.1f} s")
