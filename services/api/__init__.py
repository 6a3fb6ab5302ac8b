"""The HTTP API: the app (`services.api.app`), one controller per resource, and the problems,
views, bodies, guards and reads and writes they share."""
