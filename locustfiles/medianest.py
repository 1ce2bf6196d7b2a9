"""The entry file: `locust -f locustfiles/medianest.py` sees every MediaNest user class (headless or web UI).

USER_CLASSES maps the names a scenario's `mix` uses to the classes; each class's `weight` is the default
mix (docs/traffic-model.md), which the runner overrides from the scenario.
"""

from locustfiles.auth import AuthUser
from locustfiles.dashboard import DashboardUser
from locustfiles.frontend import FrontendUser
from locustfiles.health import HealthUser
from locustfiles.media import MediaUser, UploadUser
from locustfiles.sockets import SocketUser

USER_CLASSES = {
    "health": HealthUser,
    "auth": AuthUser,
    "dashboard": DashboardUser,
    "media": MediaUser,
    "upload": UploadUser,
    "frontend": FrontendUser,
    "sockets": SocketUser,
}

__all__ = [cls.__name__ for cls in USER_CLASSES.values()] + ["USER_CLASSES"]
