"""Serve the backend: `gunicorn _wsgi:app`, or `python _wsgi.py --host H --port P` (what `label-studio-ml start` runs).

Both load the model once per worker at start-up, after a first RUNTIME export (if due) has run once in a child
process; `--check` loads it (exporting if due), reports the runtime in use and exits, to validate a deployment.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from sam_ls_backend.app import build_app, configure_logging, gunicorn_options, load_backend
from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors.registry import model_spec
from sam_ls_backend.settings import Settings

log = logging.getLogger("sam_ls_backend")

WORKER_BOOT_ERROR = 3  # gunicorn's exit code for "this app cannot start": stops the master too


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: parse arguments, then serve (gunicorn, or Flask's server with --debug)."""
    args = _parse_args(argv)
    try:
        settings = _settings_from_args(args)
        configure_logging(settings.log_level)
        if args.prepare_runtime:
            return prepare_runtime(settings)
        if args.check:
            backend = load_backend(settings)
            files = model_spec(settings.sam_choice).files(settings)
            runtime = getattr(backend.predictor, "runtime", "torch")
            print(f"ok: {settings.sam_choice} ({backend.predictor.model_type}) runs on {runtime} "
                  f"(RUNTIME={settings.runtime}), loads from {', '.join(map(str, files))}")
            return 0
        # Before gunicorn forks: a missing file is explained once, not by every worker.
        model_spec(settings.sam_choice).check(settings)
        settings = export_before_forking(settings, argv)
        if args.debug:
            build_app(settings).run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
            return 0
        _GunicornServer(settings).run()
        return 0
    except ConfigError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2


def prepare_runtime(settings: Settings) -> int:
    """`--prepare-runtime`: export RUNTIME's ONNX graphs if they are due, load nothing else. Exit 0 when the
    model will run as RUNTIME says, 1 when auto will fall back to torch (logged), 2 on a configuration error."""
    from sam_ls_backend.errors import RuntimeUnavailable
    from sam_ls_backend.predictors.onnx_cache import ensure_exported

    spec = model_spec(settings.sam_choice)
    if not spec.may_export(settings) or spec.runtime(settings) != "onnx":
        return 0
    try:
        ensure_exported(settings, spec.main_file(settings).require_file())
    except RuntimeUnavailable as why:
        spec.fall_back(settings, why)
        return 1
    return 0


def export_before_forking(settings: Settings, argv: list[str] | None) -> Settings:
    """A first export runs once, in a child process, before gunicorn forks: a worker busy exporting for a
    minute would be killed by gunicorn's timeout, and this process must not import onnxruntime (its workers
    would abort on exit). Returns the settings the workers get: RUNTIME=torch when the export failed."""
    if not model_spec(settings.sam_choice).may_export(settings):
        return settings
    command = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv),
               "--prepare-runtime"]
    done = subprocess.run(command, check=False)
    if done.returncode == 1:
        return settings.with_overrides(runtime="torch")  # the child said why, in one line
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    return settings


def __getattr__(name: str) -> Any:
    """`gunicorn _wsgi:app` asks for `app`: build it on first access, from the environment."""
    if name != "app":
        raise AttributeError(name)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        application = build_app(settings)
    except ConfigError as error:
        log.error("cannot start: %s", error.message)
        sys.exit(WORKER_BOOT_ERROR)
    globals()["app"] = application
    return application


class _GunicornServer(BaseApplication):
    """gunicorn run from Python, so that `python _wsgi.py` serves with the same server as production."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self):
        try:
            return build_app(self.settings)
        except ConfigError as error:
            log.error("cannot start: %s", error.message)
            sys.exit(WORKER_BOOT_ERROR)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Segment Anything backend for Label Studio")
    parser.add_argument("--host", help="address to bind (HOST, default 0.0.0.0)")
    parser.add_argument("-p", "--port", type=int, help="port to listen on (PORT, default 9090)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (LOG_LEVEL, default INFO)")
    parser.add_argument("-d", "--debug", action="store_true", help="serve with Flask's debug server")
    parser.add_argument("--kwargs", "--with", dest="kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                        help="settings by environment name, e.g. SAM_CHOICE=SAM DEVICE=cpu")
    parser.add_argument("--model-dir", help="folder of checkpoints (MODEL_DIR, default ./models)")
    parser.add_argument("--basic-auth-user", help="require this basic-auth user (BASIC_AUTH_USER)")
    parser.add_argument("--basic-auth-pass", help="and this password (BASIC_AUTH_PASS)")
    parser.add_argument("--check", action="store_true", help="load the model, report the runtime in use, and exit")
    parser.add_argument("--prepare-runtime", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then `--kwargs`, then the explicit flags."""
    overrides: dict[str, str] = {}
    for item in args.kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--kwargs takes KEY=VALUE pairs, not {item!r}")
        overrides[key] = value
    flags = {"HOST": args.host, "PORT": args.port, "LOG_LEVEL": args.log_level, "MODEL_DIR": args.model_dir,
             "BASIC_AUTH_USER": args.basic_auth_user, "BASIC_AUTH_PASS": args.basic_auth_pass}
    overrides.update({key: str(value) for key, value in flags.items() if value is not None})
    return Settings.from_env(None, **overrides)


if __name__ == "__main__":
    sys.exit(main())
