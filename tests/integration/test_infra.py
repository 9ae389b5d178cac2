"""infra/ against the code: every command in the cluster files and docs goes through the real parser.

`svgt ...` through svgt.cli.build_parser(), `dvc ...` through DVC's own parser, `ray ...` through Ray's click
commands, params overrides through svgt.core.params; then image names, versions, install steps and GPU counts
are checked against constraints.txt, pyproject.toml, setup.sh and each other. No cluster, Docker or network.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import importlib.util
import json
import re
import shlex
import tomllib
import typing
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from svgt.cli import build_parser
from svgt.core.params import Params, from_dict

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
RAY_UP = INFRA / "ray-cluster.yaml"
DOCS = [INFRA / "README.md", INFRA / "dvc-remote-s3.md"]
CREDENTIAL_OPTIONS = {"access_key_id", "secret_access_key", "session_token", "sse_customer_key"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}
SHELL_PREFIXES = {"{", "}", "(", ")", "then", "do", "else", "!"}


# ---------------------------------------------------------------- code-side facts


def _load_set_params():
    spec = importlib.util.spec_from_file_location("infra_set_params", INFRA / "set_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SET_PARAMS = _load_set_params()


def params_keys(cls: type = Params, prefix: str = "") -> tuple[set[str], set[str]]:
    """(sections, leaves) of the params schema as dotted keys, built from the dataclasses."""
    sections: set[str] = set()
    leaves: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            sections.add(key)
            sub_sections, sub_leaves = params_keys(hints[f.name], key + ".")
            sections |= sub_sections
            leaves |= sub_leaves
        else:
            leaves.add(key)
    return sections, leaves


SECTIONS, LEAVES = params_keys()
TOP_SECTIONS = sorted(s for s in SECTIONS if "." not in s)
# a dotted params key in prose or config, not a host name or file name (registry.example.com/..., x.yaml)
DOTTED_KEY = re.compile(r"(?<![\w/.$-])(?:" + "|".join(TOP_SECTIONS) + r")(?:\.[a-z_][a-z0-9_]*)+(?![\w/-]|\.\w|:/)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_normalize(name)] = version.strip()
    return out


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@functools.cache
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def dvc_outs() -> set[str]:
    outs = set()
    for stage in dvc_stages().values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                outs.add(next(iter(out)) if isinstance(out, dict) else out)
    return outs


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


# ---------------------------------------------------------------- shell commands -> real parsers


def segments(line: str) -> list[list[str]]:
    """One shell line -> the argv of each simple command (split at && || ; |, env assignments dropped)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, current = [], []
    for token in lex:
        if token in SHELL_SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(token)
    out.append(current)
    result = []
    for argv in out:
        while argv and (argv[0] in SHELL_PREFIXES or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0])):
            argv = argv[1:]
        if argv:
            result.append(argv)
    return result


def logical_lines(script: str) -> list[str]:
    return [ln.strip() for ln in script.replace("\\\n", " ").splitlines() if ln.strip() and ln.strip()[0] != "#"]


def check_svgt(argv: list[str]) -> argparse.Namespace:
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as err:
        pytest.fail(f"`{shlex.join(argv)}` is not a valid svgt command (argparse exit {err.code})")
    if args.step == "train" and args.stage in (2, 3) and args.init is None:
        pytest.fail(f"`{shlex.join(argv)}`: stage {args.stage} needs --init (svgt.training.step refuses it)")
    if args.step == "train" and args.in_cluster and (args.detach or args.attach):
        pytest.fail(f"`{shlex.join(argv)}`: --in-cluster is a job's own driver; --detach/--attach are the submitter's")
    return args


def check_dvc(argv: list[str]) -> argparse.Namespace:
    from dvc.cli import DvcParserError, parse_args

    try:
        args = parse_args(argv[1:])
    except (DvcParserError, SystemExit):
        pytest.fail(f"`{shlex.join(argv)}` is not a valid dvc command")
    targets = getattr(args, "targets", None) or []
    if argv[1] in ("repro", "pull", "push", "status", "fetch"):
        known = set(dvc_stages()) | dvc_outs()
        unknown = [t for t in targets if t not in known]
        assert not unknown, f"`{shlex.join(argv)}`: {unknown} are neither dvc.yaml stages nor outputs"
    if argv[1:3] == ["remote", "add"]:
        assert args.url.startswith("s3://"), f"`{shlex.join(argv)}`: expected an s3:// remote"
    if argv[1:3] == ["remote", "modify"]:
        from dvc.config_schema import REMOTE_SCHEMAS

        options = {str(k) for k in REMOTE_SCHEMAS["s3"]}
        assert args.option in options, f"`{shlex.join(argv)}`: {args.option!r} is not an S3 remote option"
        assert args.option not in CREDENTIAL_OPTIONS, f"`{shlex.join(argv)}`: credentials go in env/profiles only"
    return args


def check_set_params(argv: list[str], base: dict | None = None) -> dict:
    """Apply a `python infra/set_params.py ...` call to params.yaml (or ``base``); returns the new raw params."""
    try:
        args = SET_PARAMS.build_parser().parse_args(argv[2:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}`: bad set_params.py arguments")
    for item in args.overrides:
        key = item.partition("=")[0]
        if key not in LEAVES:
            pytest.fail(f"`{shlex.join(argv)}`: {key!r} is not a key of svgt.core.params.Params")
    try:
        return SET_PARAMS.apply_overrides(raw_params() if base is None else base, args.overrides)
    except ValueError as err:
        pytest.fail(f"`{shlex.join(argv)}`: {err}")


def check_ray(argv: list[str]) -> tuple[str, dict]:
    import click
    from ray.scripts.scripts import cli

    cmd, name, args = cli, "ray", argv[1:]
    while isinstance(cmd, click.Group):
        sub = cmd.get_command(click.Context(cmd), args[0]) if args else None
        if sub is None:
            pytest.fail(f"`{shlex.join(argv)}`: no such ray command")
        cmd, name, args = sub, args[0], args[1:]
    try:
        params = cmd.make_context(name, list(args)).params
    except click.ClickException as err:
        pytest.fail(f"`{shlex.join(argv)}`: {err.format_message()}")
    if name == "submit":
        for inner in segments(" ".join(params["entrypoint"])):
            check_command(inner)
    if "cluster_config_file" in params:
        assert (REPO / params["cluster_config_file"]).is_file(), f"`{shlex.join(argv)}`: no such file"
    return name, params


def is_set_params(argv: list[str]) -> bool:
    return Path(argv[0]).name.startswith("python") and len(argv) > 1 and argv[1].endswith("infra/set_params.py")


def check_command(argv: list[str]) -> str:
    for token in argv:  # repo files named by a command must exist
        if token.startswith("infra/"):
            assert (REPO / token).exists(), f"`{shlex.join(argv)}`: {token} does not exist"
    prog = Path(argv[0]).name
    if prog.startswith("python") and argv[1:3] == ["-m", "svgt.cli"]:  # how submitted stage jobs run svgt
        check_svgt(["svgt", *argv[3:]])
        return "svgt"
    if prog == "svgt":
        check_svgt(argv)
    elif prog == "dvc":
        check_dvc(argv)
    elif prog == "ray":
        check_ray(argv)
    elif is_set_params(argv):
        check_set_params(argv)
        return "set_params"
    return prog


def check_line(line: str) -> list[str]:
    return [check_command(argv) for argv in segments(line)]


# ---------------------------------------------------------------- file readers


def md_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", text, re.S | re.M)]


def md_inline(text: str) -> list[str]:
    prose = re.sub(r"^[ \t]*```[a-z]*\n.*?^[ \t]*```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def doc_commands(path: Path) -> list[str]:
    text = path.read_text()
    lines = [ln for block in md_blocks(text) for ln in logical_lines(block)]
    # inline svgt commands with options and set_params calls in prose, unless they hold placeholders
    lines += [s for s in md_inline(text) if not _placeholder(s)
              and (s.startswith("svgt ") and " -" in s or s.startswith("python infra/set_params.py "))]
    return lines


def _placeholder(text: str) -> bool:
    return "..." in text or "<" in text or any(re.fullmatch(r"[A-Z_]{2,}", t) for t in text.split())


def svgt_steps() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@functools.cache
def k8s(path: Path, kind: str) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}"
    return docs[0]


def ray_groups() -> list[tuple[str, dict, dict]]:
    """(name, rayStartParams, pod spec) of the head and every worker group."""
    spec = k8s(RAYCLUSTER, "RayCluster")["spec"]
    groups = [("head", spec["headGroupSpec"]["rayStartParams"], spec["headGroupSpec"]["template"]["spec"])]
    groups += [(g["groupName"], g["rayStartParams"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return groups


def dockerfile() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def docker_args() -> dict[str, str]:
    args = {}
    for instr, rest in dockerfile():
        if instr == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args


def expand(token: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), token)


def pip_installs(lines: list[str], env: dict[str, str]) -> list[argparse.Namespace]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--constraint", action="append", default=[])
    parser.add_argument("-e", "--editable", action="append", default=[])
    parser.add_argument("--index-url")
    parser.add_argument("reqs", nargs="*")
    found = []
    for line in lines:
        for argv in segments(line):
            argv = [expand(a, env) for a in argv]
            prog = Path(argv[0]).name
            if prog.startswith("pip") and argv[1:2] == ["install"]:
                found.append(parser.parse_known_args(argv[2:])[0])
            elif prog.startswith("python") and argv[1:4] == ["-m", "pip", "install"]:
                found.append(parser.parse_known_args(argv[4:])[0])
    return found


def install_signature(lines: list[str], env: dict[str, str]) -> dict:
    """How a file installs svgt: pip pin, torch pin + index, project with constraints, ray[default] pin."""
    sig: dict = {}
    for ns in pip_installs(lines, env):
        constrained = any(Path(c).name == "constraints.txt" for c in ns.constraint)
        for req in ns.reqs:
            if req.startswith("pip=="):
                sig["pip"] = req.split("==")[1]
            elif req.startswith("torch=="):
                sig["torch"] = (req.split("==")[1], ns.index_url)
            elif req.startswith("ray[default]=="):
                sig["ray_default"] = (req.split("==")[1], constrained)
            elif req in (".", "~/svgt") or req.startswith(("/", "~/")):
                sig["project"] = {"constrained": constrained, "editable": False, "extras": "[" in req}
        if ns.editable:
            sig["project"] = {"constrained": constrained, "editable": True, "extras": "[" in ns.editable[0]}
    return sig


def ray_up_commands(config: dict) -> list[str]:
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key, [])]


def all_commands() -> list[tuple[str, str]]:
    found = [(p.name, ln) for p in DOCS for ln in doc_commands(p)]
    found.append(("rayjob.yaml", " ".join(k8s(RAYJOB, "RayJob")["spec"]["entrypoint"].split())))
    found += [("ray-cluster.yaml", ln) for ln in ray_up_commands(yaml.safe_load(RAY_UP.read_text()))]
    found += [("Dockerfile", rest) for instr, rest in dockerfile() if instr == "RUN"]
    for _, _, pod in ray_groups():
        for c in pod.get("initContainers", []):
            found += [(f"raycluster.yaml:{c['name']}", ln) for arg in c.get("args", []) for ln in logical_lines(arg)]
    return found


# ---------------------------------------------------------------- the checker itself can fail


@pytest.mark.parametrize("line", [
    "svgt trian --stage 1",
    "svgt train --stage 4",
    "svgt train --stage 1 --params params.yaml",   # --params belongs before the step
    "svgt train --stage 2 --out models/stage2",    # stage 2 without --init
    "svgt evaluate --modle models/stage3",
    "python infra/set_params.py train.ray.use_gpus=true",
    "python infra/set_params.py train.ray.num_workers=two",
    "python infra/set_params.py train.ray=1",
    "dvc repro stage4",
    "dvc repro --pulll stage3",
    "dvc remote modify storage secret_access_key abc",
    "dvc remote modify storage endpoint_url http://127.0.0.1:9000",
    "ray job submit --adress http://127.0.0.1:8265 -- svgt train --stage 1",
    "ray job submit --address http://127.0.0.1:8265 -- 'cd /x && svgt trian --stage 1'",
    "ray start --num-gpu=1",
    "kubectl apply -f infra/kuberay/raycluster.yml",
    "svgt train --stage 1 --in-cluster --detach",
    "python -m svgt.cli train --stage 1 --in-clster",
])
def test_checker_rejects(line):
    with pytest.raises((pytest.fail.Exception, AssertionError)):
        check_line(line)


@pytest.mark.parametrize("line", [
    "svgt --params params.yaml train --stage 1",
    "RAY_ADDRESS=auto svgt train --stage 3 --init models/stage2",
    "cd /mnt/svgt/repo && python infra/set_params.py train.ray.use_gpu=true && dvc repro --pull stage3",
    "ray job submit --address http://127.0.0.1:8265 -- 'svgt evaluate --module models/stage3'",
    "RAY_ADDRESS=http://127.0.0.1:8265 svgt train --stage 2 --init models/stage1 --attach svgt-stage2-0123456789ab",
])
def test_checker_accepts(line):
    check_line(line)


def test_submitted_stage_entrypoint_is_a_valid_command():
    """What svgt.training.submit hands Ray as a stage job's entrypoint goes through the same checker."""
    from svgt.training.submit import entrypoint

    line = entrypoint(3, hidden_dir=Path("data/hidden"), data_path=Path("data/values/values.parquet"),
                      backbone_dir=Path("data/backbone"), init_module=Path("models/stage2"))
    assert check_line(line) == ["svgt"]
    args = check_svgt(["svgt", *shlex.split(line)[3:]])
    assert args.in_cluster and args.stage == 3 and args.init.is_absolute()


def test_params_keys_match_set_params_and_params_yaml():
    assert SET_PARAMS.leaf_keys() == LEAVES
    assert {"train.ray.address", "train.ray.use_gpu", "train.ray.storage_path", "registry.tracking_uri"} <= LEAVES
    ray_yaml = set(raw_params()["train"]["ray"])
    assert {f"train.ray.{k}" for k in ray_yaml} == {k for k in LEAVES if k.startswith("train.ray.")}


def test_set_params_cli(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    assert SET_PARAMS.main(["--file", str(target), "train.ray.use_gpu=true", "train.ray.num_workers=2",
                            "train.ray.storage_path=s3://b/ray"]) == 0
    ray_cfg = from_dict(Params, yaml.safe_load(target.read_text()), "").train.ray
    assert (ray_cfg.use_gpu, ray_cfg.num_workers, ray_cfg.storage_path) == (True, 2, "s3://b/ray")
    before = target.read_bytes()
    assert SET_PARAMS.main(["--file", str(target), "train.ray.use_gpus=true"]) == 2
    assert SET_PARAMS.main(["--file", str(target), "train.ray.cpus_per_worker=1.5"]) == 2
    assert target.read_bytes() == before


# ---------------------------------------------------------------- every command in infra/


@pytest.mark.parametrize(("source", "line"), all_commands(), ids=lambda x: x if len(x) < 60 else x[:57] + "...")
def test_every_infra_command_parses(source, line):
    check_line(line)


def test_params_keys_mentioned_in_infra_exist():
    mentioned = set()
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".md", ".yaml", ".py", "")):
        for match in DOTTED_KEY.finditer(path.read_text()):
            assert match.group(0) in LEAVES | SECTIONS, f"{path.name}: {match.group(0)} is not a params key"
            mentioned.add(match.group(0))
    assert {"train.ray.use_gpu", "train.ray.storage_path"} <= mentioned


def test_every_yaml_parses_and_readme_lists_every_file():
    for path in INFRA.rglob("*.yaml"):
        assert [d for d in yaml.safe_load_all(path.read_text()) if d], path
    readme = (INFRA / "README.md").read_text()
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != "README.md" and "__pycache__" not in path.parts:
            assert f"`{path.relative_to(INFRA)}`" in readme, f"infra/README.md does not describe {path.name}"


def test_docs_name_real_svgt_steps():
    for path in DOCS:
        for span in md_inline(path.read_text()):
            tokens = span.split()
            if tokens[0] != "svgt" or len(tokens) < 2:
                continue
            rest = tokens[1:]
            while rest and rest[0] in ("--params", "-v", "--verbose"):
                rest = rest[2:] if rest[0] == "--params" else rest[1:]
            if rest and not _placeholder(rest[0]):
                assert rest[0] in svgt_steps(), f"{path.name}: `{span}` names no svgt step"


def test_docs_use_the_cli_and_the_shared_checkout():
    readme_kinds = {k for ln in doc_commands(INFRA / "README.md") for k in check_line(ln)}
    assert {"svgt", "dvc", "ray", "set_params", "kubectl", "docker"} <= readme_kinds
    workdir = ray_groups()[0][2]["containers"][0]["workingDir"]
    for _, line in all_commands():
        for argv in segments(line):
            if argv[0] == "cd" and argv[1].startswith("/mnt/"):
                assert argv[1] == workdir, f"`{line}` enters {argv[1]}, the Ray pods run in {workdir}"


# ---------------------------------------------------------------- Dockerfile


def docker_stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's build stages by name (``FROM image AS name``), each with its instructions."""
    stages: dict[str, list[tuple[str, str]]] = {}
    for instr, rest in dockerfile():
        if instr == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            stages[name] = []
        stages[name].append((instr, rest))
    return stages


def test_dockerfile_base_and_user():
    steps = dockerfile()
    stages = docker_stages()
    # every base is an official python image, except a stage built on an earlier one
    froms = [rest.split()[0] for instr, rest in steps if instr == "FROM" and rest.split()[0] not in stages]
    assert froms
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    for image in froms:
        name, _, tag = image.partition("@")[0].partition(":")
        assert tag and "latest" not in tag, f"FROM {image}: needs an explicit, non-latest tag"
        assert name == "python" and re.match(r"\d+\.\d+", tag), f"FROM {image}: expected an official python image"
        minor = re.match(r"\d+\.\d+", tag).group(0)
        assert requires.contains(f"{minor}.0"), f"FROM {image} does not satisfy requires-python {requires}"
    assert f"python{minor} -m venv" in DOCKERFILE.read_text()

    users = [rest for instr, rest in steps if instr == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must not run as root"
    assert docker_useradd()[-1] == users[-1] and docker_uid() != 0
    # the worker image (the first stage, which KubeRay runs) passes the container command through, for Ray
    worker = next(iter(stages.values()))
    entry = [json.loads(rest) for instr, rest in worker if instr == "ENTRYPOINT"]
    assert not entry or entry[-1][-1] == "--", "ENTRYPOINT must pass the container command through (for Ray)"
    assert not any("svgt" in part for e in entry for part in e)


def test_dockerfile_server_target_runs_svgt_serve_on_the_port_it_exposes():
    stages = docker_stages()
    assert "server" in stages and stages["server"][0][1].split()[0] in stages, "server builds on the worker image"
    steps = stages["server"]
    entry = next(json.loads(rest) for instr, rest in steps if instr == "ENTRYPOINT")
    cmd = next(json.loads(rest) for instr, rest in steps if instr == "CMD")
    argv = entry[entry.index("--") + 1:] + cmd
    assert argv[:2] == ["svgt", "serve"] and check_command(argv) == "svgt"  # the real parser accepts it
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "inside a container the server must listen on every interface"
    assert [rest for instr, rest in steps if instr == "EXPOSE"] == [port]
    health = next(rest for instr, rest in steps if instr == "HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/ready" in health
    # svgt reads params.yaml from its working directory
    assert ("COPY", "params.yaml ./") in steps and any(instr == "WORKDIR" for instr, _ in steps)


def test_dockerfile_installs_with_constraints():
    args = docker_args()
    sig = install_signature([rest for instr, rest in dockerfile() if instr == "RUN"], args)
    setup_pip = re.search(r'"pip==([\d.]+)"', (INFRA / "setup.sh").read_text()).group(1)
    assert sig["pip"] == setup_pip
    assert sig["torch"] == (pins()["torch"], args["SVGT_TORCH_INDEX"]), "torch pin/index differ from constraints"
    assert args["SVGT_TORCH_INDEX"].startswith("https://download.pytorch.org/whl/")
    assert sig["project"] == {"constrained": True, "editable": False, "extras": False}
    assert sig["ray_default"] == (pins()["ray"], True)


def test_dockerfile_copies_are_in_the_build_context():
    ignore = [ln.strip() for ln in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]

    def excluded(path: str) -> bool:
        result = False
        for pattern in ignore:
            negated, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
                result = not negated
        return result

    copied = [src for instr, rest in dockerfile() if instr == "COPY" for src in rest.split()[:-1]
              if not src.startswith("--")]
    assert "constraints.txt" in copied and "pyproject.toml" in copied
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not excluded(src), f"COPY {src}: excluded by Dockerfile.dockerignore"
    packages = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"pyproject packages {pattern} not copied into the image"


# ---------------------------------------------------------------- KubeRay


def docker_useradd() -> list[str]:
    found = [a for i, r in dockerfile() if i == "RUN" for a in segments(expand(r, docker_args())) if a[0] == "useradd"]
    assert len(found) == 1, "the Dockerfile should create exactly one user"
    return found[0]


def docker_uid() -> int:
    argv = docker_useradd()
    return int(argv[argv.index("--uid") + 1])


def image_name() -> str:
    return re.search(r'org\.opencontainers\.image\.title="([^"]+)"', DOCKERFILE.read_text()).group(1)


def test_raycluster_images_and_versions():
    cluster = k8s(RAYCLUSTER, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == pins()["ray"]
    images = {c["image"] for _, _, pod in ray_groups() for c in pod["containers"] + pod.get("initContainers", [])}
    assert len(images) == 1, f"every Ray pod should run the one svgt image, got {images}"
    repo, _, tag = images.pop().rpartition(":")
    assert repo.rsplit("/", 1)[-1] == image_name()
    assert tag == pyproject()["project"]["version"] and tag != "latest"
    for _, _, pod in ray_groups():
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == docker_uid()


def test_raycluster_gpu_workers_and_start_params():
    groups = ray_groups()
    for name, params, pod in groups:
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values must be strings"
        argv = ["ray", "start"] + (["--head"] if name == "head" else []) + [f"--{k}={v}" for k, v in params.items()]
        check_ray(argv)
        limits = pod["containers"][0]["resources"]["limits"]
        requests = pod["containers"][0]["resources"].get("requests", {})
        gpus = int(limits.get("nvidia.com/gpu", 0))
        assert int(params.get("num-gpus", gpus)) == gpus, f"{name}: num-gpus {params.get('num-gpus')} != {gpus}"
        assert int(requests.get("nvidia.com/gpu", gpus)) == gpus, f"{name}: GPU requests must equal limits"
        if "num-cpus" in params:
            assert int(params["num-cpus"]) == int(limits["cpu"]), f"{name}: num-cpus != cpu limit"
    assert int(groups[0][1]["num-gpus"]) == 0 and "nvidia.com/gpu" not in groups[0][2]["containers"][0]["resources"]
    spec = k8s(RAYCLUSTER, "RayCluster")["spec"]
    gpu_groups = [g for g in spec["workerGroupSpecs"] if int(g["rayStartParams"].get("num-gpus", 0)) > 0]
    assert gpu_groups, "no GPU worker group"
    for g in gpu_groups:
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"] and g["maxReplicas"] >= 1


def test_raycluster_shared_workspace():
    claim = k8s(RAYCLUSTER, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    dirs, mounts = set(), set()
    for name, _, pod in ray_groups():
        volumes = {v["name"]: v for v in pod["volumes"]}
        ray_container = pod["containers"][0]
        dirs.add(ray_container["workingDir"])
        shared = [m["mountPath"] for m in ray_container["volumeMounts"]
                  if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
        assert any(ray_container["workingDir"].startswith(p.rstrip("/") + "/") for p in shared), \
            f"{name}: workingDir is not on the shared workspace volume"
        mounts |= set(shared)
    # svgt hands workers absolute paths resolved on the driver: the workspace must sit at one path everywhere
    assert len(mounts) == 1 and len(dirs) == 1, f"workspace mounted at {mounts}, Ray started in {dirs}"


def test_rayjob_runs_the_pipeline_on_the_cluster():
    job = k8s(RAYJOB, "RayJob")
    cluster = k8s(RAYCLUSTER, "RayCluster")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    commands = segments(" ".join(job["spec"]["entrypoint"].split()))
    assert commands[0] == ["cd", ray_groups()[0][2]["containers"][0]["workingDir"]]
    raw = raw_params()
    for argv in commands:
        check_command(argv)
        if is_set_params(argv):
            raw = check_set_params(argv, raw)
    assert any(a[0] == "svgt" or a[:2] == ["dvc", "repro"] for a in commands), "the RayJob runs no pipeline step"
    ray_cfg = from_dict(Params, raw, "").train.ray

    assert ray_cfg.use_gpu, "the RayJob should train on the GPU workers"
    assert ray_cfg.address in (None, "auto"), "under a RayJob the driver joins through RAY_ADDRESS"
    gpu_groups = [g for g in cluster["spec"]["workerGroupSpecs"] if int(g["rayStartParams"].get("num-gpus", 0)) > 0]
    fitting = [g for g in gpu_groups if int(g["rayStartParams"]["num-cpus"]) >= ray_cfg.cpus_per_worker]
    assert fitting, f"no GPU worker has cpus_per_worker={ray_cfg.cpus_per_worker} CPUs"
    capacity = sum(g["maxReplicas"] * int(g["rayStartParams"]["num-gpus"]) for g in fitting)
    assert ray_cfg.num_workers <= capacity, f"num_workers={ray_cfg.num_workers} > {capacity} GPUs"

    storage = urlparse(ray_cfg.storage_path)
    assert storage.scheme == "s3", "a multi-node Ray Train run needs storage every node reaches"
    remote = dvc_remote_url()
    assert storage.netloc == remote.netloc, "Ray storage and the DVC remote should share the documented bucket"
    a, b = storage.path.rstrip("/") + "/", remote.path.rstrip("/") + "/"
    assert not a.startswith(b) and not b.startswith(a), "Ray run state must not live inside the DVC remote"

    env = yaml.safe_load(job["spec"].get("runtimeEnvYAML", "{}")) or {}
    assert not {"pip", "conda", "uv", "py_executable", "image_uri", "container"} & set(env), \
        "runtimeEnv must not install packages: the image is built with constraints.txt"
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())


# ---------------------------------------------------------------- ray up


def test_ray_up_config_is_valid_and_has_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(RAY_UP.read_text())
    validate_config(prepare_config(json.loads(json.dumps(config))))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) >= 1 and t.get("max_workers", 0) >= 1}
    assert gpu_types and head["resources"].get("GPU", 0) == 0

    starts = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        argvs = [a for cmd in config[key] for a in segments(cmd)]
        start = [a for a in argvs if a[:2] == ["ray", "start"]]
        assert len(start) == 1, f"{key}: expected one `ray start`"
        starts[key] = (check_ray(start[0])[1], [a[1] for a in argvs if a[0] == "cd"])
    head_params, head_cd = starts["head_start_ray_commands"]
    worker_params, worker_cd = starts["worker_start_ray_commands"]
    assert head_params["head"] and not worker_params["head"]
    assert head_params["num_gpus"] in (None, head["resources"].get("GPU", 0))
    assert worker_params["num_gpus"] in (None, *(t["resources"]["GPU"] for t in gpu_types.values()))
    assert head_cd and head_cd == worker_cd, "head and workers must run Ray in the same (shared) directory"
    assert any(head_cd[0] in cmd for cmd in config["head_setup_commands"]), "the shared checkout is never created"


def test_ray_up_installs_like_the_dockerfile():
    config = yaml.safe_load(RAY_UP.read_text())
    dockerfile_sig = install_signature([r for i, r in dockerfile() if i == "RUN"], docker_args())
    ray_up_sig = install_signature(ray_up_commands(config), {})
    assert ray_up_sig == dockerfile_sig
    assert any(re.search(r"\bpython3\.11 -m venv\b", c) for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/svgt": "."}, "setup commands install from ~/svgt, synced from the repo"


# ---------------------------------------------------------------- DVC remote doc and secrets


def dvc_remote_url():
    adds = [a for ln in doc_commands(INFRA / "dvc-remote-s3.md") for a in segments(ln) if a[1:3] == ["remote", "add"]]
    assert len(adds) == 1
    return urlparse(check_dvc(adds[0]).url)


def test_dvc_remote_doc():
    argvs = [a for ln in doc_commands(INFRA / "dvc-remote-s3.md") for a in segments(ln) if a[0] == "dvc"]
    add = check_dvc(next(a for a in argvs if a[1:3] == ["remote", "add"]))
    assert add.default, "the documented remote should be the default (-d)"
    modifies = [check_dvc(a) for a in argvs if a[1:3] == ["remote", "modify"]]
    assert {m.name for m in modifies} == {add.name}
    assert "endpointurl" in {m.option for m in modifies}
    assert dvc_remote_url().scheme == "s3"


def test_no_literal_credentials_in_infra():
    patterns = [r"AKIA[0-9A-Z]{16}", r"(?i)secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{20,}",
                r"(?i)--from-literal=AWS_SECRET_ACCESS_KEY=[^\"$]"]
    for path in INFRA.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            text = path.read_text()
            for pattern in patterns:
                assert not re.search(pattern, text), f"{path.name}: looks like a literal credential ({pattern})"
    for _, _, pod in ray_groups():
        for c in pod["containers"] + pod.get("initContainers", []):
            for var in c.get("env", []):
                if re.search(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", var["name"]):
                    assert "value" not in var, f"{c['name']}: {var['name']} must come from a secret"


def test_readme_builds_the_image_the_cluster_runs():
    builds = [a for ln in doc_commands(INFRA / "README.md") for a in segments(ln) if a[:2] == ["docker", "build"]]
    assert builds, "infra/README.md shows no docker build"
    image = next(c["image"] for _, _, pod in ray_groups() for c in pod["containers"])
    for argv in builds:
        assert (REPO / argv[argv.index("-f") + 1]) == DOCKERFILE and argv[-1] == "."
        if "--target" in argv:  # another target of the same Dockerfile (the server image)
            target = argv[argv.index("--target") + 1]
            assert target in docker_stages(), f"docker build --target {target}: no such stage"
            assert argv[argv.index("-t") + 1] == image.replace("svgt-worker", f"svgt-{target}")
            continue
        assert argv[argv.index("-t") + 1] == image, "README builds a different image than raycluster.yaml runs"
