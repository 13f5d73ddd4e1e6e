"""The form of the Authorization header of API requests, and which form a mandant's API takes.

The API's quickstart says ``Authorization: Bearer <access_token>``, but its own curl example
sends the bare token, and gateways differ. The setting (``--api.authorization``) fixes the form
(bearer, raw) or leaves it to ``auto``: Bearer first; when the API refuses a token fresh from
the token endpoint, the other form once; then whichever form the API last accepted.
"""

from __future__ import annotations

import logging
import threading

LOG = logging.getLogger(__name__)


def header_value(form: str, token: str) -> str:
    """The value of the Authorization header that carries ``token`` in ``form``."""
    return f"Bearer {token}" if form == "bearer" else token


def shown(form: str) -> str:
    """The header in ``form`` with a placeholder for the token, for messages."""
    return f"Authorization: {header_value(form, '<token>')}"


class HeaderForm:
    """Which form of the Authorization header one mandant's API requests carry; thread-safe.

    Lives as long as the mandant's setting and API URL stay (a reload that changes neither
    keeps it), so ``auto`` finds the form once per process, not once per refresh.
    """

    def __init__(self, setting: str, mandant: str) -> None:
        self.setting = setting  # one of model.AUTHORIZATION_SETTINGS
        self._mandant = mandant
        self._form = "raw" if setting == "raw" else "bearer"
        self._accepted: str | None = None
        self._lock = threading.Lock()

    @property
    def form(self) -> str:
        """The form to send now."""
        return self._form

    @property
    def accepted(self) -> str | None:
        """The form the API last accepted a token in, or None before it accepted one."""
        return self._accepted

    def other(self, form: str) -> str | None:
        """The form to try, once, after the API refused a fresh token sent in ``form``: the
        other one with ``auto``, None when the setting fixes the form."""
        if self.setting != "auto":
            return None
        return "raw" if form == "bearer" else "bearer"

    def works(self, form: str) -> None:
        """The API accepted a token sent in ``form``: send that form from now on. With
        ``auto``, logged at info when the form is first found and when it changes."""
        if form == self._accepted:  # every page of every refresh: no lock on the usual path
            return
        with self._lock:
            before = self._accepted
            if form == before:
                return
            self._accepted = self._form = form
        if self.setting != "auto":
            return
        if before is None:
            LOG.info(
                "mandant %s: the API accepts the access token as %s "
                "(--api.authorization=auto); sending that form from now on",
                self._mandant,
                shown(form),
            )
        else:
            LOG.info(
                "mandant %s: the API no longer accepts the access token as %s but as %s "
                "(--api.authorization=auto); sending that form from now on",
                self._mandant,
                shown(before),
                shown(form),
            )
