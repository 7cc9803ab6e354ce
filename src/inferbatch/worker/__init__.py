"""The worker role: claim requests, call engines, record results, drain on SIGTERM."""
