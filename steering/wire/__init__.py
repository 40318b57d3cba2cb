"""The HTTP wire format shared by the server and its clients: pydantic models and method names, no torch."""
