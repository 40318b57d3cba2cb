"""`python -m app`: run the server with the settings from the environment."""

from app.main import run

run()
