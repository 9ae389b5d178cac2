"""Flow: point a registry alias (default ``production``) at a version (default: the current ``challenger``).

Run it with ``python -m flows.promote [--alias production] [--version N] [--to-tracking-uri URI]``; with
``--to-tracking-uri`` the version is copied (verified) into that MLflow registry and the alias is set there.
"""

from __future__ import annotations

import argparse

from prefect import flow

from flows import tasks as t


@flow(name="promote-value-module", log_prints=True)
def promote(alias: str = "production", version: int | None = None, from_alias: str = "challenger",
            params_path: str = "params.yaml", workdir: str = ".", to_tracking_uri: str | None = None) -> int:
    """Move ``alias`` to ``version`` (or to the version ``from_alias`` points at) and return that version; with
    ``to_tracking_uri``, copy that version into that registry and set ``alias`` there."""
    with t.working_directory(workdir):  # registry.tracking_uri may be a relative sqlite:/// path
        promoted = t.promote_alias(params_path, alias, version, from_alias, to_tracking_uri)
    print(f"@{alias} -> version {promoted}")
    return promoted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__.split("\n")[0])
    parser.add_argument("--alias", default="production")
    parser.add_argument("--version", type=int, default=None, help="default: the version --from-alias points at")
    parser.add_argument("--from-alias", default="challenger")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--to-tracking-uri", default=None, help="copy the version into this MLflow registry")
    args = parser.parse_args(argv)
    promote(alias=args.alias, version=args.version, from_alias=args.from_alias, params_path=args.params,
            workdir=args.workdir, to_tracking_uri=args.to_tracking_uri)


if __name__ == "__main__":
    main()
