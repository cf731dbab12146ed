"""gunicorn's settings for `gunicorn -c gunicorn.conf.py _wsgi:app`, taken from the backend's own settings."""

from _wsgi import gunicorn_options
from settings import Settings

globals().update(gunicorn_options(Settings.from_env()))
