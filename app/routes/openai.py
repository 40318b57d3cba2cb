"""The OpenAI routes live in `app.openai.routes`; this name keeps the router where the app mounts it."""

from app.openai.routes import router

__all__ = ["router"]
