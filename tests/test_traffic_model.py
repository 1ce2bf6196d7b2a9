"""The traffic model end to end: every user class in a real headless Locust environment against the reference
target on loopback, its request names and counts, its failure kinds, push delays, upload memory, and the
secrecy of tokens; plus plain `locust -f locustfiles/medianest.py` as a user would run it."""

import csv
import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gevent
import httpx
import locust  # noqa: F401  (gevent patching first, as in conftest)
import pytest
from headless import run_headless
from locust.argument_parser import parse_options
from locust.env import Environment

import locustfiles.medianest as entry
from locustfiles.auth import AuthUser
from locustfiles.dashboard import DashboardUser
from locustfiles.frontend import FrontendUser
from locustfiles.health import HealthUser
from locustfiles.media import MediaUser, UploadUser
from locustfiles.sockets import SocketUser
from medianest_load.failures import failure_kind
from medianest_load.paths import LOCUSTFILE, REPO_ROOT, TARGET_PROFILES_DIR
from medianest_load.secrets import redact, register_secret
from medianest_load.settings import HarnessOptions, host_refusal

LOCUST = str(Path(sys.executable).with_name("locust"))
FAST = ["--think-min", "0.05", "--think-max", "0.15"]
PUSH_LATENCY_MS = 60


@dataclass(frozen=True)
class Sample:
    request_type: str
    name: str
    response_time: float
    response_length: int
    exception: BaseException | None
    response: object = None

    @property
    def endpoint(self) -> str:
        return f"{self.request_type} {self.name}"

    @property
    def kind(self) -> str:
        return failure_kind(self.exception)


def run_users(host: str, user_classes: list, args: list[str], users: int, seconds: float,
              until: Callable[[list[Sample]], bool] | None = None) -> list[Sample]:
    """Run classes headless in this process for `seconds` (or until `until(samples)` holds, at most `seconds`), then
    stop; every sample Locust saw."""
    samples: list[Sample] = []

    def collect(request_type, name, response_time, response_length, exception=None, response=None, **_):
        samples.append(Sample(request_type, name, response_time, response_length, exception, response))

    run_headless(host, user_classes, args, users, seconds, collect,
                 until=None if until is None else lambda: until(samples))
    return samples


def at_least(count: int, *endpoints: str) -> Callable[[list[Sample]], bool]:
    """A run's stop condition: every endpoint seen `count` times."""
    return lambda samples: min(counts(samples)[endpoint] for endpoint in endpoints) >= count


def wait_until(condition, timeout_s: float, what: str) -> None:
    """Poll (yielding to the users' greenlets) until `condition()` holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.05)


def counts(samples: list[Sample]) -> Counter:
    return Counter(s.endpoint for s in samples)


def failures(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.exception is not None]


@pytest.fixture(scope="module")
def baseline():
    """One baseline target for the name and count checks (fast service times, frequent pushes that leave
    the server PUSH_LATENCY_MS after they are stamped)."""
    from reference_target.launcher import start_target

    target = start_target(["--profile", "baseline", "--seed", "1", "--latency-scale", "0.2",
                           "--push-interval-s", "0.2", "--push-latency-ms", str(PUSH_LATENCY_MS), "--bundle-kb", "600"])
    yield target
    target.stop()


# ---------------------------------------------------------------------------------------- names and counts


def test_health_user_checks_both_health_routes(baseline):
    samples = run_users(baseline.url, [HealthUser], ["--target-profile", "reference", *FAST], 3, 2,
                        until=at_least(5, "GET /api/v1/health", "GET /api/v1/simple-health"))
    seen = counts(samples)
    assert set(seen) == {"GET /api/v1/health", "GET /api/v1/simple-health"}
    assert min(seen.values()) >= 5 and not failures(samples)


def test_auth_user_checks_session_fetches_csrf_and_logs_in_and_out(baseline):
    endpoints = {"GET /api/v1/auth/session", "GET /api/v1/csrf/token", "POST /api/v1/auth/plex/pin",
                 "POST /api/v1/auth/plex/verify", "POST /api/v1/auth/logout", "TXN login"}
    samples = run_users(baseline.url, [AuthUser], ["--target-profile", "reference", *FAST], 4, 4,
                        until=lambda samples: at_least(1, *endpoints)(samples)
                        and at_least(5, "GET /api/v1/auth/session")(samples))
    seen = counts(samples)
    assert set(seen) == endpoints
    assert not failures(samples)
    # one transaction per finished login (PIN then verify), timed over both steps
    assert seen["TXN login"] == seen["POST /api/v1/auth/plex/verify"]
    fastest_login = min(s.response_time for s in samples if s.endpoint == "TXN login")
    fastest_steps = sum(min(s.response_time for s in samples if s.endpoint == f"POST /api/v1/auth/plex/{step}")
                        for step in ("pin", "verify"))
    assert fastest_login >= fastest_steps
    # every user logs in once at start, then the 1-in-10 login task logs in and out again; the stop may
    # catch a user between its PIN and its verify, leaving at most one unanswered PIN per user
    pins, verifies = seen["POST /api/v1/auth/plex/pin"], seen["POST /api/v1/auth/plex/verify"]
    assert verifies <= pins <= verifies + 4
    assert 1 <= seen["POST /api/v1/auth/logout"] <= seen["POST /api/v1/auth/plex/verify"] - 4
    assert seen["GET /api/v1/auth/session"] > seen["POST /api/v1/auth/logout"]


def test_dashboard_user_gets_stats_status_and_notifications(baseline):
    dashboard = {f"GET /api/v1/dashboard/{n}" for n in ("stats", "status", "notifications")}
    samples = run_users(baseline.url, [DashboardUser], ["--target-profile", "reference", *FAST], 4, 3,
                        until=lambda samples: at_least(5, *dashboard)(samples) and at_least(4, "TXN login")(samples))
    seen = counts(samples)
    assert set(seen) == dashboard | {"GET /api/v1/csrf/token", "POST /api/v1/auth/plex/pin",
                                     "POST /api/v1/auth/plex/verify", "TXN login"}
    assert seen["POST /api/v1/auth/plex/verify"] == seen["TXN login"] == 4, "one login per user, at start"
    assert min(seen[e] for e in dashboard) >= 5 and not failures(samples)


def test_media_user_runs_search_request_list_detail_as_one_flow(baseline):
    users = 4
    flow = ["GET /api/v1/media/search", "POST /api/v1/media/request", "GET /api/v1/media/requests",
            "GET /api/v1/media/requests/:id"]
    samples = run_users(baseline.url, [MediaUser], ["--target-profile", "reference", *FAST], users, 3,
                        until=lambda samples: at_least(5, flow[0])(samples) and at_least(1, *flow, "TXN media flow")(samples))
    seen = counts(samples)
    assert set(flow) <= set(seen) and not failures(samples)
    assert seen[flow[0]] >= 5
    # a flow stopped by the end of the run leaves at most one step missing per user
    steps = [seen[e] for e in flow]
    assert steps == sorted(steps, reverse=True) and steps[0] - steps[-1] <= users
    # each finished flow is one successful transaction; a flow cut by the stop records none
    assert steps[-1] <= seen["TXN media flow"] <= steps[0]


def test_upload_user_posts_multipart_files_of_the_configured_sizes(baseline):
    def uploads_of(samples: list[Sample]) -> list[Sample]:
        return [s for s in samples if s.endpoint == "POST /api/v1/media/upload"]

    def sizes(uploads: list[Sample]) -> set[int]:
        # the target answers with the multipart bytes it read: the file plus a few hundred bytes of framing
        received = [json.loads(s.response.content)["data"]["bytes"] for s in uploads if s.exception is None]
        return {next((kb for kb in (16, 256) if 0 < size - kb * 1024 < 512), 0) for size in received}

    samples = run_users(baseline.url, [UploadUser],
                        ["--target-profile", "reference", "--upload-sizes-kb", "16,256", *FAST], 3, 3,
                        until=lambda samples: len(uploads_of(samples)) >= 10 and sizes(uploads_of(samples)) == {16, 256})
    uploads = uploads_of(samples)
    assert len(uploads) >= 10 and not failures(samples)
    assert sizes(uploads) == {16, 256}


def test_frontend_user_fetches_every_asset_and_records_the_bundle_per_visit(baseline):
    samples = run_users(baseline.url, [FrontendUser], ["--target-profile", "reference", *FAST], 1, 3,
                        until=lambda samples: len(samples) >= 5 * 10)
    assert set(counts(samples)) == {"GET /", "PAGE ttfb /", "GET /_next/static/:asset", "PAGE / (first visit)",
                                    "TXN first visit"}
    assert not failures(samples)
    # one user: each visit is GET / and its time to first byte, then the page's 5 scripts and 1 stylesheet
    # (--bundle-kb 600), then PAGE, then the visit as a transaction
    visits = [samples[i:i + 10] for i in range(0, len(samples) - 9, 10)]
    assert len(visits) >= 5
    for home, ttfb, *assets, page, txn in visits:
        assert home.endpoint == "GET /" and page.endpoint == "PAGE / (first visit)"
        assert ttfb.endpoint == "PAGE ttfb /" and 0 < ttfb.response_time <= home.response_time
        assert txn.endpoint == "TXN first visit" and txn.response_time >= page.response_time
        assert {a.endpoint for a in assets} == {"GET /_next/static/:asset"} and len(assets) == 6
        assert sum(a.response_length for a in assets) == 600 * 1024
        assert page.response_length == home.response_length + 600 * 1024
        assert page.response_time >= max(a.response_time for a in assets)


def test_a_failing_step_fails_its_transaction_with_the_first_failed_steps_kind(baseline, tmp_path):
    # search answers without `data` (unexpected_body): the flow stops there, and its transaction fails with that kind
    profile = (TARGET_PROFILES_DIR / "reference.yaml").read_text()
    profile = profile.replace("media_search: /api/v1/media/search", "media_search: /api/v1/health")
    (tmp_path / "broken.yaml").write_text(profile)
    samples = run_users(baseline.url, [MediaUser], ["--target-profile", str(tmp_path / "broken.yaml"), *FAST], 2, 2)
    by_endpoint = {e: {s.kind for s in samples if s.endpoint == e} for e in counts(samples)}
    assert by_endpoint["GET /api/v1/health"] == {"unexpected_body"}
    assert "POST /api/v1/media/request" not in by_endpoint, "no step is sent after the first failed one"
    assert by_endpoint["TXN media flow"] == {"unexpected_body"}, "the first failed step's kind"
    assert by_endpoint["TXN login"] == {""}


def test_socket_user_connects_joins_pings_and_times_pushes(baseline):
    samples = run_users(baseline.url, [SocketUser],
                        ["--target-profile", "reference", "--socket-session-s", "1.5", *FAST], 3, 4)
    seen = counts(samples)
    assert {"SIO connect /media", "SIO ack /media join-media-room", "SIO ack /media ping",
            "SIO push /media media-status", "SIO disconnect /media"} <= set(seen)
    assert not failures(samples)
    assert seen["SIO connect /media"] >= 3 + 3, "sessions of 1.5 s in a 4 s run: every user connects again"
    # the stop may catch a user between its connect and its join's answer: at most one such per user
    connects, joins = seen["SIO connect /media"], seen["SIO ack /media join-media-room"]
    assert connects - 3 <= joins <= connects
    pushes = [s.response_time for s in samples if s.name == "push /media media-status"]
    pushes.sort()
    print(f"push delay ms: n={len(pushes)} median={pushes[len(pushes) // 2]:.2f} max={pushes[-1]:.2f}")
    # each push is emitted PUSH_LATENCY_MS after its stamp and then crosses loopback: none earlier, nine in ten
    # within a margin, and none a unit mistake away (one stall of a busy machine may delay a few)
    assert pushes and pushes[0] >= PUSH_LATENCY_MS, pushes
    assert pushes[int(0.9 * (len(pushes) - 1))] < PUSH_LATENCY_MS + 150 and pushes[-1] < PUSH_LATENCY_MS + 1000, pushes


def test_entry_file_exposes_every_class_with_the_documented_mix():
    # in a fresh interpreter: a runner in this process may have set weights from a scenario's mix
    # and the classes `locust -f` finds in the file, through Locust's own loader: the seven of USER_CLASSES, no other
    listing = subprocess.run([sys.executable, "-c", "import locust, json, locustfiles.medianest as m; "
                              "from locust.util.load_locustfile import load_locustfile; "
                              f"found, _ = load_locustfile({str(LOCUSTFILE)!r}); "
                              "print(json.dumps([{k: [c.__name__, c.weight] for k, c in m.USER_CLASSES.items()}, "
                              "sorted(found)]))"],
                             capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    mix, found = json.loads(listing.stdout)
    assert mix == {
        "health": ["HealthUser", 5], "auth": ["AuthUser", 15], "dashboard": ["DashboardUser", 30],
        "media": ["MediaUser", 25], "upload": ["UploadUser", 5], "frontend": ["FrontendUser", 10],
        "sockets": ["SocketUser", 10]}
    assert found == sorted(cls.__name__ for cls in entry.USER_CLASSES.values()), listing.stderr


# ------------------------------------------------------------------------------------------- failure kinds


def write_tokens(tmp_path: Path, *tokens: str) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def test_server_errors_are_http_5xx(reference_target):
    target = reference_target("--profile", "baseline", "--seed", "2", "--latency-scale", "0.2",
                              "--error-rate", "0.5")
    # half the logins fail too, and a user whose login failed backs off (0.5-1 s, then 1-2 s): six users for
    # four seconds leave most of them signed in
    samples = run_users(target.url, [DashboardUser], ["--target-profile", "reference", *FAST], 6, 4,
                        until=lambda samples: len(failures(samples)) >= 5 and any(
                            s.name.startswith("/api/v1/dashboard/") and s.exception is None for s in samples))
    kinds = Counter(s.kind for s in failures(samples))
    assert set(kinds) == {"http_5xx"} and kinds["http_5xx"] >= 5
    assert any(s.name.startswith("/api/v1/dashboard/") and s.exception is None for s in samples)


def test_a_stalled_route_times_out_in_bounded_time(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "3", "--stall-rate", "1.0")
    tokens = write_tokens(tmp_path, "tok-a", "tok-b")
    started = time.monotonic()
    samples = run_users(target.url, [DashboardUser],
                        ["--target-profile", "reference", "--tokens-file", str(tokens), "--request-timeout", "0.5",
                         *FAST], 3, 2.5)
    assert time.monotonic() - started < 2.5 + 5, "no user stays stuck on a stalled request"
    timed_out = failures(samples)
    assert timed_out and {s.kind for s in timed_out} == {"timeout"}
    assert all(400 <= s.response_time < 2000 for s in timed_out)
    assert not [s for s in samples if s.exception is None]


def test_rate_limited_requests_are_http_429_and_forwarded_for_spreads_the_limiter(reference_target):
    target = reference_target("--profile", "baseline", "--seed", "4", "--latency-scale", "0.2",
                              "--rate-limit", "5", "--rate-window-s", "60")
    def limited(successes: int) -> Callable[[list[Sample]], bool]:
        return lambda samples: sum(s.exception is None for s in samples) >= successes and bool(failures(samples))

    spread = run_users(target.url, [HealthUser], ["--target-profile", "reference", *FAST], 3, 2, until=limited(3 * 5))
    assert {s.kind for s in failures(spread)} == {"http_429"}
    assert sum(s.exception is None for s in spread) == 3 * 5, "each user's own X-Forwarded-For: 5 each"
    one_client = run_users(target.url, [HealthUser], ["--target-profile", "medianest-main", *FAST], 3, 1.5,
                           until=limited(5))
    assert {s.kind for s in failures(one_client)} == {"http_429"}
    assert sum(s.exception is None for s in one_client) == 5, "no X-Forwarded-For: the peer IP's 5 in all"


def test_a_dead_port_is_connection_refused_for_http_and_socketio(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tokens = write_tokens(tmp_path, "tok-a")
    samples = run_users(f"http://127.0.0.1:{port}", [HealthUser, SocketUser],
                        ["--target-profile", "reference", "--tokens-file", str(tokens), *FAST], 4, 1.5,
                        until=at_least(1, "GET /api/v1/health", "GET /api/v1/simple-health", "SIO connect /media"))
    assert {s.endpoint for s in samples} == {"GET /api/v1/health", "GET /api/v1/simple-health",
                                             "SIO connect /media"}
    assert samples and all(s.kind == "connection_refused" for s in samples)


def test_a_body_that_is_not_healthy_is_unexpected_body(baseline, tmp_path):
    # a staging-style profile edit: health pointed at a route whose body says "ready", not ok/healthy
    profile = (TARGET_PROFILES_DIR / "reference.yaml").read_text()
    profile = profile.replace("health: /api/v1/health", "health: /api/v1/simple-health/ready")
    (tmp_path / "staging.yaml").write_text(profile)
    samples = run_users(baseline.url, [HealthUser], ["--target-profile", str(tmp_path / "staging.yaml"), *FAST], 2, 1.5,
                        until=at_least(1, "GET /api/v1/simple-health/ready", "GET /api/v1/simple-health"))
    ready = [s for s in samples if s.name == "/api/v1/simple-health/ready"]
    assert ready and {s.kind for s in ready} == {"unexpected_body"}
    assert all(s.exception is None for s in samples if s.name == "/api/v1/simple-health")


def test_a_rejected_token_and_a_server_that_goes_away_are_classified(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "5", "--push-interval-s", "0.2")
    rejected = run_users(target.url, [SocketUser, DashboardUser],
                         ["--target-profile", "reference", "--tokens-file", str(write_tokens(tmp_path, "bad")),
                          *FAST], 2, 1)
    assert rejected and {s.kind for s in rejected if s.request_type == "SIO"} == {"handshake_refused"}
    assert {s.kind for s in rejected if s.request_type != "SIO"} == {"http_4xx"}

    samples: list[Sample] = []
    env = Environment(user_classes=[SocketUser], host=target.url,
                      parsed_options=parse_options(["--target-profile", "reference", "--socket-session-s", "30",
                                                    "--connect-timeout", "1", *FAST]))
    env.events.request.add_listener(lambda request_type, name, response_time, response_length, exception=None, **_:
                                    samples.append(Sample(request_type, name, response_time, response_length,
                                                          exception)))
    runner = env.create_local_runner()
    runner.start(2, spawn_rate=2)
    wait_until(lambda: counts(samples)["SIO connect /media"] >= 2, 15, "both users connected")
    target.stop()  # the server goes away under connected users
    wait_until(lambda: min(counts(samples)[f"SIO {what} /media"] for what in ("disconnect", "reconnect")) >= 1, 15,
               "a disconnect and a reconnect attempt")
    with gevent.Timeout(15):
        runner.quit()
    by_endpoint = {e: [s.kind for s in samples if s.endpoint == e] for e in counts(samples)}
    assert by_endpoint["SIO disconnect /media"] and set(by_endpoint["SIO disconnect /media"]) == {"socket_disconnect"}
    assert set(by_endpoint["SIO reconnect /media"]) == {"connection_refused"}


def test_a_redirect_is_recorded_as_unexpected_body_and_never_followed(reference_target, tmp_path):
    # Starlette redirects a trailing slash (307 to the path without it): a profile route with one redirects
    target = reference_target("--profile", "baseline", "--seed", "8", "--latency-scale", "0.2")
    profile = (TARGET_PROFILES_DIR / "reference.yaml").read_text().replace("health: /api/v1/health",
                                                                             "health: /api/v1/health/")
    (tmp_path / "slash.yaml").write_text(profile)
    samples = run_users(target.url, [HealthUser], ["--target-profile", str(tmp_path / "slash.yaml"), *FAST], 2, 1.5,
                        until=lambda samples: at_least(3, "GET /api/v1/health/")(samples)
                        and at_least(1, "GET /api/v1/simple-health")(samples))
    redirected = [s for s in samples if s.name == "/api/v1/health/"]
    assert len(redirected) >= 3 and {s.kind for s in redirected} == {"unexpected_body"}
    assert {str(s.exception) for s in redirected} == {"HTTP 307 redirect, not followed"}
    assert all(s.exception is None for s in samples if s.name == "/api/v1/simple-health")
    metrics = httpx.get(f"{target.url}/metrics").text
    assert not re.search(r'http_requests_total\{method="GET",route="/api/v1/health"', metrics), "followed"
    assert re.search(r'http_requests_total\{method="GET",route="/api/v1/simple-health"', metrics)


def csrf_login(url: str, pin: str) -> str:
    """A token from the PIN flow under --enforce-csrf, as an operator would make one: GET the CSRF token (body
    and cookie), then POST pin and verify with the header."""
    with httpx.Client(base_url=url, timeout=10) as http:
        csrf = {"x-csrf-token": http.get("/api/v1/csrf/token").json()["data"]["token"]}
        pin_id = http.post("/api/v1/auth/plex/pin", json={"clientName": "test"}, headers=csrf).json()["data"]["id"]
        verified = http.post("/api/v1/auth/plex/verify", json={"pinId": pin_id}, headers=csrf)
        assert verified.status_code == 200, verified.text
        return verified.json()["data"]["token"]


def test_media_and_upload_users_send_csrf_in_login_and_tokens_mode(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "9", "--latency-scale", "0.2", "--enforce-csrf")
    posts = {"POST /api/v1/media/request", "POST /api/v1/media/upload"}
    options = ["--target-profile", "reference", "--upload-sizes-kb", "16", *FAST]

    login = run_users(target.url, [MediaUser, UploadUser], options, 4, 3, until=at_least(3, *posts))
    seen = counts(login)
    assert posts <= set(seen) and min(seen[e] for e in posts) >= 3 and not failures(login)

    tokens = write_tokens(tmp_path, *(csrf_login(target.url, f"operator-{i}") for i in range(2)))
    pooled = run_users(target.url, [MediaUser, UploadUser], [*options, "--tokens-file", str(tokens)], 4, 3,
                       until=at_least(3, *posts))
    seen = counts(pooled)
    assert posts <= set(seen) and min(seen[e] for e in posts) >= 3 and not failures(pooled)
    assert 1 <= seen["GET /api/v1/csrf/token"] <= 4, "one CSRF fetch per user, before its first POST"
    assert not {"POST /api/v1/auth/plex/pin", "POST /api/v1/auth/plex/verify"} & set(seen)

    # the target does enforce it: the same POST with the cookie but without the header is refused
    with httpx.Client(base_url=target.url, timeout=10) as http:
        http.get("/api/v1/csrf/token")
        refused = http.post("/api/v1/media/request", json={"mediaType": "movie", "tmdbId": 1},
                            headers={"Authorization": f"Bearer {tokens.read_text().split()[0]}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "CSRF_TOKEN_INVALID"


# ------------------------------------------------------------------------------------------ upload memory

UPLOAD_PROBE = textwrap.dedent("""
    import locust, gevent, json, sys, psutil
    from locust.argument_parser import parse_options
    from locust.env import Environment
    from locustfiles.media import UploadUser

    process, peak, results = psutil.Process(), [0], []
    def watch():
        while True:
            peak[0] = max(peak[0], process.memory_info().rss)
            gevent.sleep(0.01)
    env = Environment(user_classes=[UploadUser], host=sys.argv[1], parsed_options=parse_options(
        ["--target-profile", "reference", "--upload-sizes-kb", sys.argv[2], "--think-min", "30", "--think-max", "30",
         "--request-timeout", "60"]))
    def collect(name, response_time, exception=None, response=None, **_):
        received = json.loads(response.content)["data"]["bytes"] if name.endswith("/upload") and not exception else 0
        results.append((name, response_time, repr(exception) if exception else None, received))
    env.events.request.add_listener(collect)
    before = process.memory_info().rss
    watcher = gevent.spawn(watch)
    runner = env.create_local_runner()
    runner.start(1, spawn_rate=1)
    with gevent.Timeout(60, False):
        while not any(name == "/api/v1/media/upload" for name, *_ in results):
            gevent.sleep(0.05)
    runner.quit()
    watcher.kill()
    print(json.dumps({"before": before, "peak": peak[0], "results": results}))
""")


def test_uploading_100_mb_does_not_grow_the_user_by_the_file_size(reference_target):
    target = reference_target("--profile", "baseline", "--seed", "6", "--latency-scale", "0.1",
                              "--max-upload-mb", "150")
    size_mb = 100
    probe = subprocess.run([sys.executable, "-c", UPLOAD_PROBE, target.url, str(size_mb * 1024)],
                           capture_output=True, text=True, timeout=90, cwd=REPO_ROOT)
    assert probe.returncode == 0, probe.stderr[-2000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    upload = [r for r in report["results"] if r[0] == "/api/v1/media/upload"]
    assert upload and upload[0][2] is None, report["results"]
    assert upload[0][3] > size_mb * 2**20, "the target read the whole file"
    growth_mb = (report["peak"] - report["before"]) / 2**20
    print(f"100 MB upload: {upload[0][1]:.0f} ms, RSS {report['before'] / 2**20:.1f} MB -> peak "
          f"{report['peak'] / 2**20:.1f} MB (+{growth_mb:.1f} MB)")
    assert growth_mb < size_mb / 5


# ------------------------------------------------------------------------------- plain locust, token secrecy


def locust_command(host: str, out: Path, *extra: str) -> list[str]:
    return [LOCUST, "-f", str(LOCUSTFILE), "--headless", "-H", host, "--csv", str(out / "run"),
            "--logfile", str(out / "locust.log"), "--loglevel", "DEBUG", "--html", str(out / "report.html"), *extra]


def test_redact_masks_registered_tokens_jwts_and_labelled_credentials():
    opaque = "opaque-" + "k3y" * 6
    register_secret(opaque)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    text = f'sent {opaque} in a body, then {jwt}; Bearer abc.def, ?token=s3cr3t&page=1 {{"csrfToken": "f00d"}}'
    masked = redact(text)
    assert [secret for secret in (opaque, jwt, "abc.def", "s3cr3t", "f00d") if secret in masked] == []
    assert masked.startswith("sent [redacted] in a body, then [redacted]; Bearer [redacted], ?token=[redacted]&page=1")


def test_tokens_never_reach_stats_logs_or_reports(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "7", "--latency-scale", "0.2", "--error-rate", "0.2")
    secret = "tok-NEVER-WRITE-" + "x7Q9" * 8
    tokens = write_tokens(tmp_path, secret)
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(locust_command(target.url, out, "-u", "14", "-r", "14", "-t", "6s", "--target-profile",
                                         "reference", "--tokens-file", str(tokens), *FAST),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    stats = (out / "run_stats.csv").read_text()
    assert "HTTP 401" in (out / "run_failures.csv").read_text(), "failures were written (the token is refused)"
    assert "Aggregated" in stats
    written = [p for p in out.iterdir() if p.is_file()]
    assert {"run_stats.csv", "run_failures.csv", "locust.log", "report.html"} <= {p.name for p in written}
    for path in written:
        assert secret not in path.read_text(errors="replace"), path.name
    assert secret not in done.stdout + done.stderr


def test_plain_locust_command_runs_every_class_without_a_failure(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "1")
    out = tmp_path / "out"
    out.mkdir()
    # the harness's own think-time options (plain locust has them too) at a quarter of their default: the same
    # traffic in half the time
    done = subprocess.run(locust_command(target.url, out, "-u", "20", "-r", "10", "-t", "10s", "--think-min", "0.25",
                                         "--think-max", "0.75"),
                          capture_output=True, text=True, timeout=90, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "run_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    requests, failed = int(rows["Aggregated"]["Request Count"]), int(rows["Aggregated"]["Failure Count"])
    print(f"plain locust, 20 users for 10 s: {requests} samples, {failed} failures, {len(rows) - 1} endpoints")
    assert requests > 300 and failed == 0
    assert {"/api/v1/health", "/api/v1/dashboard/stats", "/api/v1/media/requests/:id", "/_next/static/:asset",
            "/ (first visit)", "connect /media", "push /media media-status"} <= set(rows)
    # login tokens are opaque 43-character strings on the reference target: none may be written anywhere
    token_like = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
    for path in out.iterdir():
        if path.suffix in (".csv", ".log"):
            assert not token_like.search(path.read_text(errors="replace")), path.name


def test_plain_locust_refuses_a_host_that_is_not_loopback_before_any_request():
    command = [LOCUST, "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-r", "1", "-t", "5s",
               "-H", "http://medianest-staging.example.com"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert done.returncode != 0 and len(errors) == 1, output
    assert "refusing 'medianest-staging.example.com'" in errors[0]
    assert "--allow-host medianest-staging.example.com" in errors[0]
    assert "Traceback" not in output and "Ramping" not in output, "stopped before any user started"


def test_allow_host_names_hosts_and_users_refuse_any_other_at_test_start(monkeypatch):
    def allowed(args: list[str]) -> tuple[str, ...]:
        return HarnessOptions.given(parse_options(args)).allowed_hosts

    assert allowed(["--allow-host", "staging.invalid, other.invalid"]) == ("staging.invalid", "other.invalid")
    assert host_refusal("http://staging.invalid:3000", allowed(["--allow-host", "staging.invalid"])) is None
    assert host_refusal("http://127.0.0.1:8080", allowed([])) is None
    assert host_refusal("http://staging.invalid", allowed([])) is not None
    monkeypatch.setenv("MEDIANEST_ALLOW_HOSTS", "staging.invalid")
    assert host_refusal("https://staging.invalid", allowed([])) is None
    monkeypatch.delenv("MEDIANEST_ALLOW_HOSTS")

    # what the web UI does: the host changes after init; the test_start check and on_start stop every user
    samples: list[str] = []
    guarded = type("GuardedHealthUser", (HealthUser,), {})  # start() sets the host on the class
    env = Environment(user_classes=[guarded], host="http://127.0.0.1:9", events=locust.events,
                      parsed_options=parse_options(["--target-profile", "reference", *FAST]))
    record = lambda name, **_: samples.append(name)  # noqa: E731
    env.events.request.add_listener(record)
    try:
        runner = env.create_local_runner()
        env.host = "http://medianest-staging.invalid"
        runner.start(3, spawn_rate=3)
        gevent.sleep(1)
        with gevent.Timeout(15):
            runner.quit()
    finally:
        env.events.request.remove_listener(record)
    assert samples == [] and runner.user_count == 0


def test_stopping_socket_users_mid_connect_or_disconnect_never_hangs(reference_target, tmp_path):
    # websocket-client's close() and engine.io's event dispatch swallow every exception, Locust's GreenletExit
    # included: a stop that lands inside them used to leave the user running and the runner waiting forever
    target = reference_target("--profile", "baseline", "--seed", "9", "--latency-scale", "0.2")
    churn = ["--target-profile", "reference", "--socket-session-s", "0.2", "--think-min", "0.01", "--think-max", "0.03"]
    tokens = ["--tokens-file", str(write_tokens(tmp_path, "bad"))]
    for round_number, args in enumerate([churn, churn + tokens] * 4):
        env = Environment(user_classes=[SocketUser], host=target.url, parsed_options=parse_options(args))
        runner = env.create_local_runner()
        runner.start(25, spawn_rate=25)
        gevent.sleep(0.4 + 0.1 * round_number)  # stops land at varied points of the spawn and connect/close cycle
        started = time.monotonic()
        with gevent.Timeout(20, AssertionError(f"round {round_number}: the stop hung with {runner.user_count} users")):
            runner.quit()
        assert runner.user_count == 0
        print(f"round {round_number}: stopped 25 socket users in {time.monotonic() - started:.2f} s")
