"""The error a session is refused with: every problem found, each with its key path and place."""

from __future__ import annotations

from opencas.errors import ProblemsError


class SessionError(ProblemsError, code="invalid-session", http_status=400):
    """A session (its text, its normal form, or a decision about it) is invalid.

    ``problems`` lists everything found, in the order of the text, each naming the key in the
    session's language (``services[0].environment.HOME``; empty for the document as a whole);
    ``str()`` shows one problem per line as ``SOURCE:LINE:COL: key: message``, the source being
    ``session`` unless the error's maker names another. A plain string becomes a single problem
    without a key or place.
    """

    nothing_found = "the session is invalid"
    default_source = "session"
