"""The Starlette application: routes, request decoding, jobs and their event streams."""
