"""Wire models: the request and response shapes of the HTTP APIs, as Pydantic models."""
