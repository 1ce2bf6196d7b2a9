"""Session traffic: the session check every page makes, CSRF token fetches, and now and then a whole login
(Plex PIN then verify) followed by a logout of the token it produced."""

from __future__ import annotations

from locust import task

from locustfiles.common import MediaNestUser, dig
from medianest_load.secrets import forget_secret


class AuthUser(MediaNestUser):
    """GET session (6), GET csrf/token (3), POST pin + POST verify + POST logout (1).

    The login task runs only in login mode: with a token pool the target's login flow is not automatable
    (MediaNest's PIN needs a person at plex.tv). It logs out the token it just made, never the user's own.
    """

    weight = 15
    needs_token = True

    @task(6)
    def session(self) -> None:
        if self.ensure_token():
            self.call("GET", self.profile.routes.session, authorized=True,
                      check=lambda b: None if dig(b, "data", "user") is not None else "session has no data.user")

    @task(3)
    def csrf(self) -> None:
        self.fetch_csrf()

    @task(1)
    def login_logout(self) -> None:
        if self.settings is None or self.settings.tokens is not None:
            return
        token = self.login()
        if token:
            self.call("POST", self.profile.routes.logout, token=token, expect_json=False)
            forget_secret(token)
