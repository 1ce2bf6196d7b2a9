"""Health checks as a monitor or a load balancer sends them: cheap, public, and a body that must say so."""

from __future__ import annotations

from typing import Any

from locust import task

from locustfiles.common import MediaNestUser, dig

HEALTHY = ("ok", "healthy")


def health_problem(body: Any) -> str | None:
    status = dig(body, "status")
    return None if status in HEALTHY else f"health status is {str(status)[:20]!r}, expected ok or healthy"


class HealthUser(MediaNestUser):
    """GET /api/v1/health and /api/v1/simple-health; a 200 whose body is not ok/healthy is a failure."""

    weight = 5

    @task
    def health(self) -> None:
        self.call("GET", self.profile.routes.health, check=health_problem)

    @task
    def simple_health(self) -> None:
        self.call("GET", self.profile.routes.simple_health, check=health_problem)
