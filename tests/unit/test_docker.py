"""The container files, checked statically and fast (the real build and the checks inside the image are
`make image-test`, docker/image-test.sh, which CI runs where it is root with buildah).

hadolint and shellcheck must report nothing at all; then the structure the issue asks for: a pinned base from
a build argument, multi-stage with a runtime stage that only copies the venv, pinned installs without a pip
cache, tini as PID 1 in an exec-form ENTRYPOINT, a numeric non-root USER, NCCL defaults under their current
names, labels, a .dockerignore that keeps the venv and runs out of the context, a CPU variant through build
arguments, pip mirror arguments and a wheelhouse as a named build context for the builder stage only, the
two-node compose file, the Makefile's docker targets and the image test that CI runs.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT_SH = ROOT / "docker" / "entrypoint.sh"
IMAGE_TEST_SH = ROOT / "docker" / "image-test.sh"
CI_RUN = ROOT / ".ci" / "run"
PIP_MIRROR_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `make setup` installs it (requirements-dev.txt)"
    return found


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages(instructions) -> list[list[tuple[str, str]]]:
    stages: list[list] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _named(stages) -> dict[str, list[tuple[str, str]]]:
    """Stages by their `AS` name."""
    return {stage[0][1].split()[-1]: stage for stage in stages if " AS " in stage[0][1]}


def _arg_defaults(instructions) -> dict[str, str]:
    out = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            out.setdefault(key, value)
    return out


@pytest.fixture(scope="module")
def dockerfile():
    ins = _instructions(DOCKERFILE.read_text())
    return ins, _stages(ins), _arg_defaults(ins)


def test_hadolint_reports_nothing():
    r = subprocess.run(
        [_tool("hadolint"), "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(r.stdout or "[]") == [], r.stdout
    assert r.returncode == 0, r.stderr


def test_every_hadolint_ignore_gives_its_reason():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
        if m:
            reason = " ".join(lines[max(0, i - 3) : i])
            for rule in m.group(1).split(","):
                assert rule in reason and "ignored" in reason, f"line {i + 1}: say why {rule} is ignored"


def test_shellcheck_passes_on_the_entrypoint():
    r = subprocess.run([_tool("shellcheck"), str(ENTRYPOINT_SH)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = ENTRYPOINT_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(ENTRYPOINT_SH, os.X_OK)
    # The launcher replaces the shell, so that signals reach it (and through it the workers).
    assert re.search(r'^exec "\$PYTHON" -m launch ', text, re.M)


def test_base_image_is_a_pinned_build_argument(dockerfile):
    ins, stages, args = dockerfile
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE="), (
        "the base tag is the first build argument"
    )
    base = args["BASE_IMAGE"]
    name, _, tag = base.rpartition(":")
    assert name and tag and tag != "latest" and "/" not in tag, base
    assert re.search(r"\d+\.\d+", tag), f"{base}: pin a versioned tag"
    froms = [rest for stage in stages for word, rest in stage if word == "FROM"]
    # Every stage but the empty wheelhouse placeholder is built on the base.
    assert all(rest.split()[0] == "${BASE_IMAGE}" for rest in froms if rest != "scratch AS wheels"), froms
    assert "latest" not in " ".join(rest for word, rest in ins if word in ("FROM", "ARG"))


def test_multi_stage_runtime_copies_only_the_venv(dockerfile):
    _, stages, _ = dockerfile
    assert len(stages) >= 2
    assert "builder" in _named(stages) and stages[-1][0][1].endswith("AS runtime")
    final = stages[-1]
    copies_from = [rest for word, rest in final if word == "COPY" and "--from=" in rest]
    assert copies_from == ["--from=builder /opt/venv /opt/venv"]
    runs = " ".join(rest for word, rest in final if word == "RUN")
    build_tools = (
        "gcc",
        "g++",
        "clang",
        "build-essential",
        "make",
        "cmake",
        "python3-dev",
        "python3-pip",
        "python3-venv",
        "git",
        "curl",
        "wget",
    )
    installed = re.findall(r"apt-get install ([^&]*)", runs)
    assert installed, "the runtime stage installs python3 and tini"
    packages = {p for chunk in installed for p in chunk.split() if not p.startswith("-")}
    assert {"python3", "tini"} <= packages
    assert not packages & set(build_tools), packages & set(build_tools)
    assert "pip install" not in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_pinned_installs_without_pip_cache(dockerfile):
    ins, stages, args = dockerfile
    pips = [rest for word, rest in ins if word == "RUN" and "pip install" in rest]
    assert pips and all("--no-cache-dir" in rest for rest in pips)
    torch_install = next(rest for rest in pips if '"torch==${TORCH_VERSION}"' in rest)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert args["TORCH_VERSION"] == pinned, "the image's torch is the one CI tests"
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert all("==" in r for r in reqs if r), "every runtime requirement is pinned"


def test_tini_is_pid1_in_an_exec_form_entrypoint(dockerfile):
    ins, stages, _ = dockerfile
    final = stages[-1]
    (entry,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    argv = json.loads(entry)  # exec form: a JSON array, no shell in between to swallow SIGTERM
    assert argv == ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
    (cmd,) = [rest for word, rest in final if word == "CMD"]
    assert json.loads(cmd)[0] == "-c"
    assert any(
        word == "COPY"
        and rest.endswith("docker/entrypoint.sh docker/entrypoint.sh")
        and "--chmod=0755" in rest
        for word, rest in final
    )


def test_final_user_is_numeric_and_not_root(dockerfile):
    _, stages, args = dockerfile
    users = [rest for word, rest in stages[-1] if word == "USER"]
    assert users, "the runtime stage sets USER"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), user
    last = [word for word, _ in stages[-1] if word in ("USER", "RUN")]
    assert last[-1] == "USER", "nothing runs as root after USER"


def test_env_labels_and_nccl_defaults(dockerfile):
    ins, stages, _ = dockerfile
    env = {}
    for word, rest in stages[-1]:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:") and env["PYTHONPATH"] == "/app"
    assert env["NCCL_DEBUG"] == "WARN"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] in ("1", "3")
    assert int(env["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0 and env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    # Deprecated spellings that torch 2.x only warns about.
    assert not {"NCCL_ASYNC_ERROR_HANDLING", "NCCL_BLOCKING_WAIT"} & set(env)
    labels = " ".join(rest for word, rest in stages[-1] if word == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_pip_mirror_arguments_reach_the_builder_only(dockerfile):
    """pip reads PIP_* from the environment, so an ARG is enough; unset (no default), pip keeps its own
    defaults and the CUDA build is unchanged. No ENV: a mirror's address must not stay in the image."""
    ins, stages, args = dockerfile
    builder, runtime = _named(stages)["builder"], stages[-1]
    declared = {rest.split("=")[0] for word, rest in builder if word == "ARG"}
    assert set(PIP_MIRROR_ARGS) <= declared
    assert not set(PIP_MIRROR_ARGS) & set(args), "no defaults: unset means pip's defaults"
    assert not any(word == "ARG" and rest.startswith("PIP_") for word, rest in runtime)
    envs = " ".join(rest for word, rest in ins if word == "ENV")
    assert not re.search(r"\bPIP_(INDEX_URL|EXTRA_INDEX_URL|FIND_LINKS|NO_INDEX|TRUSTED_HOST)\b", envs)
    pip_at = next(i for i, (word, rest) in enumerate(builder) if word == "RUN" and "pip install" in rest)
    arg_at = max(i for i, (word, rest) in enumerate(builder) if word == "ARG" and rest.startswith("PIP_"))
    assert arg_at < pip_at, "declared before the pip step that reads them"


def test_wheelhouse_is_a_named_context_mounted_into_the_builder(dockerfile):
    """`--build-context wheels=DIR` replaces the empty `wheels` stage; a bind mount keeps it out of every
    layer."""
    ins, stages, _ = dockerfile
    named = _named(stages)
    assert named["wheels"] == [("FROM", "scratch AS wheels")], "an empty placeholder stage"
    assert stages.index(named["wheels"]) < stages.index(named["builder"]), "defined before it is mounted"
    pips = [rest for word, rest in named["builder"] if word == "RUN" and "pip install" in rest]
    assert len(pips) == 1, "torch and the requirements in one RUN: one layer (vfs copies every layer whole)"
    (pip,) = pips
    assert "--mount=type=bind,from=wheels,target=/wheels" in pip
    assert "--mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt" in pip
    assert pip.index('"torch==${TORCH_VERSION}"') < pip.index("-r /tmp/requirements.txt")
    for word, rest in ins:
        assert not (word in ("COPY", "ADD") and "wheels" in rest), (
            f"{word} {rest}: the wheelhouse became a layer"
        )
    assert not any("from=wheels" in rest for word, rest in stages[-1]), "the runtime stage never sees it"
    assert _ignored("wheels", _dockerignore()) and _ignored("build", _dockerignore())


def _dockerignore() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch(path, p)
        or fnmatch.fnmatch(parts[0], p)
        or (p.startswith("**/") and any(fnmatch.fnmatch(part, p[3:]) for part in parts))
        for p in patterns
    )


def test_dockerignore_keeps_the_context_small_but_not_what_the_image_copies(dockerfile):
    ins, _, _ = dockerfile
    patterns = _dockerignore()
    for path in (".venv", "runs", ".git", "trainer/__pycache__", ".pytest_cache"):
        assert _ignored(path, patterns), f"{path} should be excluded from the build context"
    sources = [rest.split()[-2] for word, rest in ins if word == "COPY" and "--from=" not in rest]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
        assert not _ignored(src.rstrip("/"), patterns), f"COPY {src}: excluded by .dockerignore"


def test_cpu_variant_is_the_same_dockerfile_with_build_args(dockerfile):
    _, _, args = dockerfile
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "docker-build", "VARIANT=cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert make.returncode == 0, make.stderr
    cpu_args = dict(re.findall(r"--build-arg (\w+)=(\S+)", make.stdout))
    assert set(cpu_args) <= set(args) | {"VERSION", "VCS_REF", "APP_UID"}, "only declared build arguments"
    assert cpu_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    base = cpu_args["BASE_IMAGE"]
    assert ":" in base and not base.endswith(":latest")
    # nvidia/cuda:*-ubuntu24.04 is built on ubuntu:24.04: the same apt steps work for both.
    assert args["BASE_IMAGE"].endswith("-" + base.replace(":", ""))
    assert "-t torchrunner:" in make.stdout and make.stdout.rstrip().endswith("-cpu .")


def test_make_docker_run_documents_and_passes_the_gpu_flags():
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "docker-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert make.returncode == 0, make.stderr
    for flag in (
        "--gpus all",
        "--ipc=host",
        "--ulimit memlock=-1",
        "--ulimit stack=67108864",
        "--stop-timeout",
    ):
        assert flag in make.stdout
    text = (ROOT / "Makefile").read_text()
    for flag in ("--gpus all", "--ipc=host", "--ulimit memlock=-1", "--ulimit stack=67108864"):
        assert re.search(r"^# " + re.escape(flag) + r"\s+\S", text, re.M), f"say why {flag} is there"


class _ComposeLoader(yaml.SafeLoader):
    """Compose's own tags (`!reset`, `!override`) on top of plain YAML."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"!reset": _plain(loader, node)})
_ComposeLoader.add_constructor("!override", _plain)


def _compose(name: str) -> dict:
    return yaml.load((ROOT / "docker" / name).read_text(), Loader=_ComposeLoader)  # noqa: S506 (safe subclass)


def test_compose_runs_two_nodes_of_one_job():
    c = _compose("compose.yaml")
    nodes = c["services"]
    assert set(nodes) == {"node0", "node1"}
    for rank, name in enumerate(("node0", "node1")):
        svc = nodes[name]
        env = svc["environment"]
        assert env["PET_NNODES"] == "2" and env["PET_NODE_RANK"] == str(rank)
        assert env["PET_MASTER_ADDR"] == "node0" and nodes["node0"]["hostname"] == "node0"
        assert "runs:/runs" in svc["volumes"] and env["RUN_DIR"].startswith("/runs/")
        assert svc["ipc"] == "host" and svc["ulimits"]["memlock"] == -1
        grace = int(svc["stop_grace_period"].rstrip("s"))
        assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < grace
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert (
            dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["device_ids"] == [str(rank)]
        )
    assert "runs" in c["volumes"]
    assert nodes["node1"]["depends_on"] == ["node0"]
    assert ":latest" not in (ROOT / "docker" / "compose.yaml").read_text()


def test_compose_cpu_override_drops_the_gpus():
    cpu = _compose("compose.cpu.yaml")
    for name in ("node0", "node1"):
        svc = cpu["services"][name]
        assert svc["deploy"] == {"!reset": {}}
        assert svc["ipc"] == "private" and svc["shm_size"]
        assert svc["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")


def test_image_test_builds_the_cpu_variant_with_buildah_from_a_wheelhouse():
    """`make image-test` (not part of `make test`) runs docker/image-test.sh, whose shape is checked here."""
    r = subprocess.run(
        [_tool("shellcheck"), str(IMAGE_TEST_SH), str(CI_RUN)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.access(IMAGE_TEST_SH, os.X_OK) and os.access(CI_RUN, os.X_OK)
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "image-test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert make.returncode == 0 and "docker/image-test.sh" in make.stdout, make.stdout + make.stderr
    test_deps = re.search(r"^test:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "image-test" not in test_deps
    text = IMAGE_TEST_SH.read_text()
    assert "\nset -euo pipefail\n" in text
    for needle in (
        "--isolation chroot",
        "--storage-driver vfs",
        "localhost/torchrunner:test-cpu",
        "localhost/debian:bookworm",
        "debootstrap --variant=minbase bookworm",
        '--build-context "wheels=$wheels"',
        "--build-arg PIP_NO_INDEX=1",
        "--build-arg PIP_FIND_LINKS=/wheels",
        "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
        "--only-binary=:all:",
        '--python-version "$PY_VERSION"',
        "--layers=false",
    ):
        assert needle in text, needle
    assert re.search(r"^PY_VERSION=3\.11$", text, re.M), "Debian 12's Python"
    # Inside the image: the declared entrypoint with tini as a subreaper, and each check the issue names.
    assert '"-s"' in text and 'entry[:1], "-s", *entry[1:]' in text
    for check in (
        "--dry-run, plain run",
        "--dry-run, PyTorchJob worker",
        '"doctor"',
        "training as uid",
        "SIGTERM -> exit 75",
        "no compilers, pip cache or apt lists",
    ):
        assert check in text, check
    assert "[ $rc -eq 75 ]" in text and "kill -TERM $pid" in text
    # The mirror path too: the builder stage from an index on loopback, no wheels context.
    for needle in (
        '--build-arg "PIP_INDEX_URL=$url"',
        "--build-arg PIP_TRUSTED_HOST=127.0.0.1",
        '--build-arg "TORCH_INDEX_URL=$url"',
        "--bind 127.0.0.1",
    ):
        assert needle in text, needle


def test_ci_runs_the_image_test_after_make_test_or_says_why_not():
    text = CI_RUN.read_text()
    assert "\nset -euo pipefail\n" in text
    lines = [line.strip() for line in text.splitlines()]
    assert "make test" in lines and "make image-test" in lines
    assert lines.index("make test") < lines.index("make image-test")
    assert "apt-get install -y -q buildah debootstrap" in text
    assert "ci: SKIP make image-test: " in text
