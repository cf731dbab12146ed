"""gunicorn's settings for `gunicorn -c gunicorn.conf.py _wsgi:app`, taken from the backend's own settings."""

import os

from sam_ls_backend.app import gunicorn_options
from sam_ls_backend.settings import Settings

globals().update(gunicorn_options(Settings.from_env()))


def on_starting(server) -> None:
    """In the master, before any worker: RUNTIME's first export, run in a child process as `python _wsgi.py`
    runs it. When it fails (said in one log line) the workers serve torch instead of trying again."""
    from _wsgi import export_before_forking

    settings = export_before_forking(Settings.from_env(), [])
    os.environ["RUNTIME"] = settings.runtime
