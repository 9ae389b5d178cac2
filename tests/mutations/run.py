"""Mutation check: apply each deliberate bug in ``mutants.yaml`` and assert that its tests catch it.

A claim is only backed if breaking it breaks a test. Each mutant names a file, an exact snippet that must
occur there exactly once (so the list cannot rot silently when code moves), its replacement, and the tests
that guard the claim. The runner works on a copy of the tracked files (the checkout is never edited), first
runs every named test on the unmutated copy (they must pass, or a "killed" mutant would mean nothing), then
each mutant alone. Exit 0 only if every mutant is killed.

    .venv/bin/python tests/mutations/run.py            # all mutants, all their tests (about 8 minutes)
    .venv/bin/python tests/mutations/run.py --fast     # their unit tests only (what CI runs, about 4 minutes)
    .venv/bin/python tests/mutations/run.py -k resume  # those whose name contains "resume"

``--fast`` leaves out the tests marked ``integration``; a mutant that only an integration test can catch is
listed as not checked (and does not fail the run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = Path(__file__).with_name("mutants.yaml")
REQUIRED = ("name", "claim", "file", "find", "replace", "tests")


def load_mutants(path: Path = CATALOGUE) -> list[dict]:
    mutants = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = set()
    for i, m in enumerate(mutants):
        missing = [k for k in REQUIRED if not m.get(k)]
        if missing:
            raise SystemExit(f"{path}: mutant #{i + 1} ({m.get('name', '?')}) lacks {', '.join(missing)}")
        if m["name"] in names:
            raise SystemExit(f"{path}: mutant name {m['name']!r} is used twice")
        names.add(m["name"])
        source = (REPO / m["file"]).read_text(encoding="utf-8")
        count = source.count(m["find"])
        if count != 1:
            raise SystemExit(f"{path}: mutant {m['name']!r}: its snippet occurs {count} times in {m['file']} "
                             "(must be exactly once; update the catalogue when the code moves)")
    return mutants


def copy_checkout(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files (the tree CI would see), plus the wheel cache."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if (REPO / ".cache").exists():  # downloaded wheels: read-only reuse, no network in the loop
        (dest / ".cache").symlink_to(REPO / ".cache")


def run_tests(root: Path, tests: list[str], timeout: int, fast: bool = False) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "--no-header", *(["-m", "not integration"] if fast else []), *tests],
                              cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - start, "timed out (counted as killed: the suite did not pass)"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    # why it failed: the first assertion/error line (so a mutant killed by, say, a syntax error shows it)
    reason = next((line for line in lines if line.startswith("E ")), lines[-1] if lines else "")
    return proc.returncode == 0, time.monotonic() - start, reason


def unit_test_ids(root: Path, tests: list[str]) -> list[str]:
    """The node ids among ``tests`` (files or ids) that are unit tests (not marked integration)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider", "-m",
                           "not integration", *tests], cwd=root, env=env, capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]


def guarded_by(test: str, collected: list[str]) -> bool:
    """Whether the catalogue's ``test`` (a file or a node id) covers one of the ``collected`` node ids."""
    return any(node == test or node.startswith(test + "::") or node.startswith(test + "[") for node in collected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this text")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per pytest run (default 600)")
    parser.add_argument("--fast", action="store_true", help="leave out tests marked integration")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the tests on unmutated code first (CI: the whole suite just passed on it)")
    args = parser.parse_args(argv)
    mutants = [m for m in load_mutants() if args.k in m["name"]]
    if not mutants:
        raise SystemExit(f"no mutant name contains {args.k!r}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="svgt-mutants-") as tmp:
        root = Path(tmp)
        copy_checkout(root)
        every_test = list(dict.fromkeys(t for m in mutants for t in m["tests"]))
        units = unit_test_ids(root, every_test) if args.fast else []
        if not args.no_baseline and (every_test if not args.fast else units):
            passed, seconds, tail = run_tests(root, every_test, args.timeout, args.fast)
            print(f"baseline: {len(every_test)} test ids on unmutated code: {'pass' if passed else 'FAIL'} "
                  f"({seconds:.0f} s)", flush=True)
            if not passed:
                print(f"the unmutated code fails its own tests: {tail}")
                return 1
        survivors, unchecked = [], []
        for m in mutants:
            if args.fast and not any(guarded_by(t, units) for t in m["tests"]):
                unchecked.append(m["name"])
                print(f"not run   {m['name']:<44}        only integration tests guard it (run without --fast)")
                continue
            target = root / m["file"]
            original = target.read_text(encoding="utf-8")
            target.write_text(original.replace(m["find"], m["replace"]), encoding="utf-8")
            try:
                passed, seconds, tail = run_tests(root, m["tests"], args.timeout, args.fast)
            finally:
                target.write_text(original, encoding="utf-8")
            print(f"{'SURVIVED' if passed else 'killed  '}  {m['name']:<44} {seconds:4.0f} s  {m['claim']}",
                  flush=True)
            if not passed:
                print(f"          {tail.strip()[:150]}", flush=True)
            if passed:
                survivors.append(m["name"])
    total = time.monotonic() - start
    checked = len(mutants) - len(unchecked)
    print(f"{checked - len(survivors)}/{checked} mutants killed in {total:.0f} s"
          + (f"; survived: {', '.join(survivors)}" if survivors else "")
          + (f"; not run (integration only): {', '.join(unchecked)}" if unchecked else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
