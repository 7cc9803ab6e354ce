"""The HTTP API: OpenAI-compatible ``/v1`` routes, health, readiness and metrics."""
