"""Backend test helpers live in backend_helpers.py; re-exported here for
`from tests.backend.conftest import compile_and_run`."""

from backend_helpers import compile_and_run, machine  # noqa: F401
