"""inferbatch: a self-hostable batch inference platform that speaks the OpenAI Batch API."""

__version__ = "0.1.0"
