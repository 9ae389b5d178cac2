"""Flow: the scheduled / event-triggered retraining entry point (deployments in prefect.yaml).

It runs train_value_module as a subflow, so every retrain shows the same tasks and artifacts; ``reason``
records why it ran (``scheduled``, or the dataset event that triggered it). Unless ``always``, a retrain
whose inputs (data, backbone, params, code) are those of a registered version stops before training.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from flows.train_value_module import train_value_module


@flow(name="retrain-value-module", log_prints=True)
def retrain(params_path: str = "params.yaml", reason: str = "scheduled", workdir: str = ".",
            always: bool = False) -> dict[str, Any]:
    """Retrain (and, when the gates pass, register a new challenger) because of ``reason``."""
    print(f"retraining: {reason}")
    return train_value_module(params_path=params_path, workdir=workdir, skip_if_unchanged=not always)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reason", default="manual")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--always", action="store_true", help="train even when the inputs are unchanged")
    args = parser.parse_args(argv)
    retrain(params_path=args.params, reason=args.reason, workdir=args.workdir, always=args.always)


if __name__ == "__main__":
    main()
