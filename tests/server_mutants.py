"""Shows that each hardening of the gallery server has a test that fails without it.

For every finding of the hostile-client review (tests/test_server_hostile.py, one test per
finding), undo its fix in a scratch copy of the package - every layer of it, so that the code
is what it was before - and run the finding's test there, then run it again on the real code.
A finding is covered when its test fails with the fix undone and passes with it in place.

    python tests/server_mutants.py              # all findings (about 5 minutes on 2 cores)
    python tests/server_mutants.py 4 8          # only the findings whose number starts so

Not part of the test suite (each case starts two servers); run it after changing a fix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "test_server_hostile.py"

# (finding, [(file, code with the fix, code without it), ...], test)
MUTANTS = [
    ("1 thin images: aspect and post-resize limits, centre-only resize", [
        ("gallery/images.py", "if max(w, h) > max_aspect * min(w, h):", "if False:"),
        ("gallery/images.py", "if rw * rh > max_pixels:", "if False:"),
        ("gallery/images.py",
         "x = torch.from_numpy(np.asarray(crop_resize(im, spec.resolution), dtype=np.uint8).copy())\n"
         "    return x[None] if grey else x.permute(2, 0, 1)",
         "from ..data import square_resize\n"
         "    return square_resize(im.convert('RGB'), spec.resolution)[:1 if grey else 3]"),
    ], "test_1_thin_images_are_refused_before_any_resizing"),
    ("2, 3 tiny and huge query vectors: checked in float64", [
        ("gallery/app.py", "v = np.asarray(req.embedding, dtype=np.float64)",
         "v = np.asarray(req.embedding, dtype=np.float32)"),
    ], "test_2_3_query_vectors_of_any_finite_scale_search_like_unit_ones"),
    ("4 ids beyond SQLite's range: path schema and store check", [
        ("gallery/metadata.py", "return SQLITE_INT[0] <= int(item_id) <= SQLITE_INT[1]", "return True"),
        ("gallery/app.py", "Path(ge=1, le=MAX_ID, description=", "Path(description="),
    ], "test_4_ids_outside_sqlite_range_are_404_or_422"),
    ("5 slow clients: the server's own HTTP protocol with timeouts", [
        ("gallery/connections.py", '"http": protocol_class(limits)', '"http": "h11"'),
    ], "test_5_slow_clients_are_timed_out_and_cannot_starve_the_server"),
    ("6 labels that look like digits", [
        ("gallery/app.py", "if CLASS_INDEX.fullmatch(value) and int(value) < len(classes):",
         "if value.isdigit() and int(value) < len(classes):"),
    ], "test_6_labels_that_look_like_digits_are_refused_cleanly"),
    ("7 one error model: the framework's errors as {problem, fix}", [
        ("gallery/problems.py", "app.add_exception_handler(StarletteHTTPException, _framework_error)", "pass"),
    ], "test_7_every_refusal_is_problem_and_fix"),
    ("8 k strictly an integer", [
        ("gallery/api.py", "JSONInt = Annotated[int, BeforeValidator(_integral), Strict()]", "JSONInt = int"),
    ], "test_8_k_is_strictly_an_integer"),
    ("8 no server paths in /v1/model", [
        ("gallery/service.py",
         'return f"{p.parent.name}/{p.name}" if p.name == "model_card.json" and p.parent.name else p.name',
         "return str(p)"),
    ], "test_8_the_model_card_shows_no_server_paths"),
    ("8 bounded sources", [
        ("gallery/app.py", "Source = Annotated[str, StringConstraints(max_length=service.limits.max_source_chars)]",
         "Source = Annotated[str, StringConstraints()]"),
    ], "test_8_sources_and_labels_are_bounded"),
    ("8 the bearer scheme in any case", [
        ("gallery/guard.py", 'if scheme.lower() != "bearer"', 'if scheme != "Bearer"'),
    ], "test_8_the_bearer_scheme_is_case_insensitive_and_the_token_exact"),
]


def run_test(package_root: Path, test: str) -> tuple[bool, str]:
    """Run one test of test_server_hostile.py against the package under ``package_root``."""
    env = dict(os.environ, PYTHONPATH=str(package_root))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"{TESTS}::{test}"],
                       cwd=package_root, env=env, capture_output=True, text=True)
    lines = p.stdout.strip().splitlines()
    why = [line for line in lines if line.startswith("E ")][:2]
    return p.returncode == 0, " | ".join(why + lines[-1:])


def check(finding: str, edits: list[tuple[str, str, str]], test: str, scratch: Path) -> dict:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(REPO / "edgequery", scratch / "edgequery")
    for rel, fixed, unfixed in edits:
        path = scratch / "edgequery" / rel
        src = path.read_text()
        if src.count(fixed) != 1:
            raise SystemExit(f"{finding}: {rel} holds {src.count(fixed)} copies of {fixed!r}, not 1: "
                             "update this script's MUTANTS to the current code")
        path.write_text(src.replace(fixed, unfixed))
    undone_passed, undone = run_test(scratch, test)
    fixed_passed, fixed_run = run_test(REPO, test)
    return {"finding": finding, "test": test, "covered": not undone_passed and fixed_passed,
            "with_fix_undone": undone, "with_fix": fixed_run}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="finding numbers to check (default: all)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(m[0].startswith(n) for n in args.only)]
    with tempfile.TemporaryDirectory(prefix="edgequery-mutants-") as tmp:
        rows = [check(*m, Path(tmp) / "tree") for m in chosen]
        for row in rows:
            print(json.dumps(row), flush=True)
    missed = [r["finding"] for r in rows if not r["covered"]]
    print(f"{len(rows) - len(missed)}/{len(rows)} findings covered" + (f"; not: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
