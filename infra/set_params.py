"""Apply dotted KEY=VALUE overrides to params.yaml, validated by svgt.core.params before anything is written.

    python infra/set_params.py train.ray.use_gpu=true train.ray.storage_path=s3://svgt-artifacts/ray
    python infra/set_params.py --file params.yaml --out /tmp/params.cluster.yaml train.ray.num_workers=2

Values are YAML scalars (``true``, ``2``, ``0.5``, ``null``, text) or flow collections (``[]``). An
unknown key, a key naming a whole section, or a value of the wrong type is refused with exit status 2
and the file is left as it was. Cluster jobs (infra/kuberay/rayjob.yaml, infra/README.md) use this on
their own checkout: params.yaml is edited in place so ``dvc repro`` sees the change. The rewritten file
keeps the values but not the comments.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

import yaml

from svgt.core.params import ConfigError, Params, from_dict


def leaf_keys(cls: type = Params, prefix: str = "") -> set[str]:
    """Every settable dotted key of ``cls`` (nested dataclass sections are walked, not settable)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys |= leaf_keys(tp, key + ".")
        else:
            keys.add(key)
    return keys


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{item!r}: expected KEY=VALUE (e.g. train.ray.use_gpu=true)")
    if key not in leaf_keys():
        raise ConfigError(f"{key}: not a params key (see svgt/core/params.py)")
    try:
        return key, yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: value {raw!r} is not valid YAML: {err}") from None


def apply_overrides(raw: dict[str, Any] | None, overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` (params.yaml as loaded) with the overrides set; raises ConfigError if invalid."""
    result = copy.deepcopy(raw or {})
    for item in overrides:
        key, value = parse_override(item)
        *sections, leaf = key.split(".")
        node = result
        for name in sections:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {name} is not a mapping in the params file")
        node[leaf] = value
    from_dict(Params, result, "")  # strict: unknown keys and wrong types fail here
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="set_params.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of editing --file in place")
    parser.add_argument("overrides", nargs="+", metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        raw = yaml.safe_load(args.file.read_text(encoding="utf-8"))
        updated = apply_overrides(raw, args.overrides)
    except (OSError, yaml.YAMLError, ConfigError) as err:
        print(f"set_params: {args.file}: {err}", file=sys.stderr)
        return 2
    out = args.out or args.file
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(updated, fh, sort_keys=False, default_flow_style=False)
    os.chmod(tmp, args.file.stat().st_mode & 0o777)
    os.replace(tmp, out)
    print(f"set_params: {out}: " + ", ".join(args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
