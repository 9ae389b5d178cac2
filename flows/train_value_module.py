"""Flow: validated data -> baselines, judge, hidden states -> curriculum stages 1-3 -> evaluation -> gates + registry.

Every task runs the same `svgt <step>` command as its dvc.yaml stage (see flows/tasks.py), in the DAG's
order. A validation or gate failure fails the flow at once (no retries) with the failures in its message;
a module that misses a gate is never registered. With ``skip_if_unchanged`` (the retrain flow's default) it
stops after ingest, validate and backbone when a registered, gate-passed version was built from exactly the
same data, backbone, params and code. Run it with ``python -m flows.train_value_module``.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from flows import tasks as t


@flow(name="train-value-module", log_prints=True)
def train_value_module(params_path: str = "params.yaml", workdir: str = ".",
                       skip_if_unchanged: bool = False) -> dict[str, Any]:
    """Train, evaluate, gate and register one value module from ``params_path`` (relative to ``workdir``)."""
    with t.working_directory(workdir):
        t.ingest(params_path)
        validation = t.validate(params_path)
        t.backbone(params_path)
        unchanged = t.unchanged_since(params_path) if skip_if_unchanged else None
        if unchanged is not None:
            print(f"nothing to retrain: {unchanged['name']} version {unchanged['version']} was built from these "
                  "exact inputs")
            return {"validation_rows": validation.get("n_rows"), "unchanged": unchanged, "registered": None}
        t.baselines(params_path)
        t.judge(params_path)
        extracted = t.extract(params_path)
        t.card(params_path)
        stages = {f"stage{stage}": t.train(params_path, stage) for stage in (1, 2, 3)}
        evaluation = t.evaluate(params_path)
        registered = t.register(params_path)  # quality gates first: a failed gate fails here, unregistered
    if registered:
        print(f"registered {registered['name']} version {registered['version']} as @{t.REGISTER_ALIAS} "
              f"(MLflow run {registered['run_id']})")
    return {"validation_rows": validation.get("n_rows"), "extract": extracted, **stages,
            "evaluation": evaluation.get("methods", {}), "registered": registered}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.train_value_module", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --workdir")
    parser.add_argument("--workdir", default=".", help="the repository checkout to run in (default: .)")
    parser.add_argument("--skip-if-unchanged", action="store_true",
                        help="stop before training when a registered version was built from the same inputs")
    args = parser.parse_args(argv)
    train_value_module(params_path=args.params, workdir=args.workdir, skip_if_unchanged=args.skip_if_unchanged)


if __name__ == "__main__":
    main()
