"""gunicorn's settings for `gunicorn -c gunicorn.conf.py _wsgi:app`, taken from the backend's own settings."""

from sam_ls_backend.app import gunicorn_options
from sam_ls_backend.settings import Settings

globals().update(gunicorn_options(Settings.from_env()))
