"""Turn expected user errors into one clear line and a non-zero exit, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["one_line_errors"]

from evaluators._cache import CacheError
from evaluators._training import BackboneError
from evaluators.graph import UntraceableModelError

# Errors that mean "the input is wrong": their message already names the value and the fix.
# Other exceptions (a KeyError, a bare RuntimeError) are bugs and keep their traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    CacheError,
    BackboneError,
    UntraceableModelError,
)


@contextmanager
def one_line_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Print ``error: <message>``, exit 2 on user errors (``EENN_TRACEBACK=1``: full trace).

    ``extra`` names further error types a command raises with a one-line message.
    """
    try:
        yield
    except KeyboardInterrupt:
        print(
            "interrupted: everything evaluated so far is in the run folder; "
            "start again with the same hydra.run.dir to continue",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except (*_USER_ERRORS, *extra) as err:
        if os.environ.get("EENN_TRACEBACK"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
