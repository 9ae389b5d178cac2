"""`svgt <step>`: argument parsing only; each command calls one library function.

DVC stages and Prefect tasks both run these same entry points, so no step's logic exists twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from svgt.config import ConfigError, Params, load_params

log = logging.getLogger("svgt")

DEFAULTS = {
    "backbone": Path("data/backbone"),
    "values": Path("data/values/values.parquet"),
    "card": Path("data/values/CARD.md"),
    "validation": Path("reports/validation"),
    "hidden": Path("data/hidden"),
    "metrics": Path("metrics"),
}


class StepFailed(RuntimeError):
    """A step ran but its result says the pipeline must stop (e.g. validation failed)."""


def cmd_backbone(params: Params, args: argparse.Namespace) -> None:
    from svgt.backbone import build_snapshot

    manifest = build_snapshot(params.backbone, args.out)
    print(
        f"backbone snapshot {args.out}: {manifest.architecture}, {manifest.num_layers} layers, "
        f"width {manifest.hidden_size}, sha256 {manifest.weights_sha256[:12]}"
    )


def cmd_ingest(params: Params, args: argparse.Namespace) -> None:
    from svgt.data.ingest import run_ingest

    summary = run_ingest(params.data, Path(args.out), Path(args.card), Path(params.backbone.cache_dir))
    print(f"canonical dataset {args.out}: {summary}")


def cmd_validate(params: Params, args: argparse.Namespace) -> None:
    from svgt.data.validation import format_failures, validate_dataset

    result = validate_dataset(Path(args.data), params.validate, Path(args.reports))
    if not result.success:
        raise StepFailed(
            f"validation of {args.data} failed ({len(result.failures)} problems); "
            f"report: {result.report_path}\n{format_failures(result)}"
        )
    print(f"validation passed: {result.n_rows} rows; report: {result.report_path}")


def cmd_extract(params: Params, args: argparse.Namespace) -> None:
    from svgt.extract import extract_hidden_states

    _require_validation(Path(args.validation), Path(args.data))
    summary = extract_hidden_states(Path(args.backbone), Path(args.data), params.extract, Path(args.out))
    metrics = {
        "layer": summary.layer,
        "examples": summary.examples,
        "tokens": summary.tokens,
        "tokens_per_second": round(summary.tokens_per_second, 1),
        "wall_seconds": round(summary.wall_seconds, 1),
        "shards_written": summary.shards_written,
        "shards_skipped": summary.shards_skipped,
        "prompts_truncated": summary.prompt_truncated,
        "responses_truncated": summary.response_truncated,
    }
    from svgt.io import write_json_atomic

    write_json_atomic(Path(args.metrics) / "extract.json", metrics)
    print(json.dumps(metrics))


def _require_validation(report_dir: Path, data: Path) -> None:
    """Downstream steps refuse data whose validation did not pass, never ran, or validated other bytes."""
    from svgt.io import sha256_file

    summary = report_dir / "validation_summary.json"
    try:
        result = json.loads(summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepFailed(f"{summary} not found: run `svgt validate` first") from None
    if result.get("success") is not True:
        raise StepFailed(f"{summary} says validation failed: fix the data and rerun `svgt validate`")
    if result.get("dataset_sha256") != sha256_file(data):
        raise StepFailed(f"{summary} validated a different version of {data}: rerun `svgt validate`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svgt", description="Train, evaluate and ship SVGT value modules.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def add(name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = add("backbone", cmd_backbone, "resolve backbone.source to a verified safetensors snapshot")
    p.add_argument("--out", default=DEFAULTS["backbone"], type=Path)
    p = add("ingest", cmd_ingest, "build the canonical value dataset (seed set or data.sources)")
    p.add_argument("--out", default=DEFAULTS["values"], type=Path)
    p.add_argument("--card", default=DEFAULTS["card"], type=Path)
    p = add("validate", cmd_validate, "Great Expectations gate on the canonical dataset")
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--reports", default=DEFAULTS["validation"], type=Path)
    p = add("extract", cmd_extract, "layer-l* hidden states as sharded safetensors")
    p.add_argument("--backbone", default=DEFAULTS["backbone"], type=Path)
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--validation", default=DEFAULTS["validation"], type=Path)
    p.add_argument("--out", default=DEFAULTS["hidden"], type=Path)
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        params = load_params(args.params)
        args.func(params, args)
    except (ConfigError, StepFailed) as err:
        print(f"svgt {args.step}: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as err:
        # library errors carry file/row/key context in their message; no traceback needed
        if args.verbose:
            raise
        print(f"svgt {args.step}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    log.info("svgt %s finished in %.1fs", args.step, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
