"""The dashboard a signed-in user lands on: stats (cached for 5 minutes on MediaNest), service status and
notifications."""

from __future__ import annotations

from locust import task

from locustfiles.common import MediaNestUser, has_data


class DashboardUser(MediaNestUser):
    """GET dashboard/stats (3), dashboard/status (2), dashboard/notifications (2), all with the bearer token."""

    weight = 30
    needs_token = True

    def _get(self, route: str) -> None:
        if self.ensure_token():
            self.call("GET", route, authorized=True, check=has_data)

    @task(3)
    def stats(self) -> None:
        self._get(self.profile.routes.dashboard_stats)

    @task(2)
    def status(self) -> None:
        self._get(self.profile.routes.dashboard_status)

    @task(2)
    def notifications(self) -> None:
        self._get(self.profile.routes.dashboard_notifications)
