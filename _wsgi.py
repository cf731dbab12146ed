"""Serve the backend: `gunicorn _wsgi:app`, or `python _wsgi.py --host H --port P` (what `label-studio-ml start` runs).

Both load the model once per worker at start-up; `--check` loads it and exits, to validate a deployment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from sam_ls_backend.app import build_app, configure_logging, gunicorn_options
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
        if args.check:
            build_app(settings)
            files = model_spec(settings.sam_choice).files(settings)
            print(f"ok: {settings.sam_choice} loads from {', '.join(map(str, files))}")
            return 0
        # Before gunicorn forks: a missing file is explained once, not by every worker.
        model_spec(settings.sam_choice).check(settings)
        if args.debug:
            build_app(settings).run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
            return 0
        _GunicornServer(settings).run()
        return 0
    except ConfigError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2


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
    parser.add_argument("--check", action="store_true", help="load the model, report, and exit")
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
