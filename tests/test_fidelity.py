"""Fidelity against a real MediaNest (issue #13): relayed pushes and their fan-out, socket failure kinds, users
that fail visibly and back off, one timeout rule with censored percentiles, a separate frontend host; and
latency only from samples that reached a server (issue #14, item 6). Every case runs against the reference
target on loopback, through real Locust users or the `run` command."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import locust  # noqa: F401  (gevent patching first, as in conftest)
import pandas as pd
import yaml
from click.testing import CliRunner
from headless import run_headless
from verdicts import assert_exit_is_the_verdicts

from analysis.judging import judge_run
from analysis.slo import SLO
from locustfiles.common import BACKOFF_BASE_S, BACKOFF_CAP_S
from locustfiles.frontend import FrontendUser
from locustfiles.media import MediaUser
from locustfiles.sockets import SocketUser
from medianest_load.cli import main
from medianest_load.failures import failure_kind
from medianest_load.inputs import load_named
from medianest_load.paths import REPO_ROOT, TARGET_PROFILES_DIR
from medianest_load.run import RunRequest, ScenarioRun, harness_options, timeout_layers
from medianest_load.scenario import SCENARIO, parse_scenario

FAST = ["--think-min", "0.05", "--think-max", "0.15"]
LOCUST = str(Path(sys.executable).with_name("locust"))
PIN = "/api/v1/auth/plex/pin"


def run_users(host: str, user_classes: list, args: list[str], users: int, seconds: float,
              until_seen: str | None = None) -> list[dict]:
    """Run classes headless in this process for `seconds` (or, given `until_seen`, until two samples of that
    endpoint came, at most `seconds`); every sample Locust saw, with its URL and kind."""
    samples: list[dict] = []

    def collect(request_type, name, response_time, exception=None, url=None, **_):
        samples.append({"endpoint": f"{request_type} {name}", "ms": response_time, "kind": failure_kind(exception),
                        "url": url})

    def seen() -> bool:
        return sum(sample["endpoint"] == until_seen for sample in samples) >= 2

    run_headless(host, user_classes, args, users, seconds, collect, until=seen if until_seen else None)
    return samples


def profile_copy(tmp_path: Path, name: str, edit: dict) -> Path:
    """target_profiles/reference.yaml with some sections replaced, as a staging copy would be."""
    profile = yaml.safe_load((TARGET_PROFILES_DIR / "reference.yaml").read_text())
    for dotted, value in edit.items():
        *parents, key = dotted.split(".")
        node = profile
        for parent in parents:
            node = node[parent]
        node[key] = value
    path = tmp_path / f"profile-{name}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def scenario_file(tmp_path: Path, name: str, mix: dict, stages: list, **extra) -> Path:
    document = {"name": name, "host": "http://127.0.0.1:1", "stages": stages, "mix": mix,
                "think_time": {"min": "0.3s", "max": "0.6s"}, "slo": "staging-gate", **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_command(tmp_path: Path, scenario: Path, host: str, *args: str) -> Path:
    """`medianest-load run` in this process; the results folder it wrote."""
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", str(scenario), "--host", host, "--out", str(out), "--quiet",
                                       "--no-gate", *args])
    assert out.is_dir(), result.output
    (folder,) = out.iterdir()
    assert_exit_is_the_verdicts(result.exit_code, folder, result.output)
    return folder


# ------------------------------------------------------------------------------------------ relayed pushes


def test_relay_publishers_reach_the_room_members_with_delays_and_fan_out(reference_target, tmp_path):
    target = reference_target("--profile", "relay", "--seed", "11", "--latency-scale", "0.2")
    profile = profile_copy(tmp_path, "relay", {"socketio.rooms": 1, "socketio.push": {
        "source": "relay", "publishers": 0.5, "rate_per_s": 4}})
    scenario = scenario_file(tmp_path, "relay", {"sockets": 1}, [{"name": "room", "users": 4, "ramp": "1s",
                                                                  "hold": "5s"}], socket_session="30s")
    folder = run_command(tmp_path, scenario, target.url, "--target-profile", str(profile))

    summary = pd.read_csv(folder / "summary.csv")
    steady = summary[(summary.stage == 1) & (summary.phase == "steady")].set_index("endpoint")
    publishes = steady.loc["SIO publish /media media-status", "requests"]
    pushes = steady.loc["SIO push /media media-status"]
    assert publishes >= 2 * 4 * 3, "two publishers at 4/s for a 5 s hold"
    assert pushes.failures == 0 and 0 < pushes.p50_ms < pushes.max_ms < 1000, "delays measured from the sentAt"
    # one room of four users, two of them publishing: each publish reaches the three other members
    fan_out = pushes.requests / publishes
    assert 2.5 <= fan_out <= 3.0, fan_out
    report = (folder / "report.md").read_text()
    assert "fan-out" in report and f"{fan_out:.1f}" in report


# ------------------------------------------------------------------------------------ socket failure kinds


def test_a_handshake_internal_error_is_its_own_kind_apart_from_an_auth_refusal(reference_target, tmp_path):
    broken = reference_target("--profile", "baseline", "--seed", "12", "--latency-scale", "0.2", "--socket-auth-error")
    samples = run_users(broken.url, [SocketUser], ["--target-profile", "reference", *FAST], 2, 1.5,
                        until_seen="SIO connect /media")
    connects = [s for s in samples if s["endpoint"] == "SIO connect /media"]
    assert connects and {s["kind"] for s in connects} == {"handshake_error"}

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("not-a-session\n")
    healthy = reference_target("--profile", "baseline", "--seed", "13", "--latency-scale", "0.2")
    refused = run_users(healthy.url, [SocketUser], ["--target-profile", "reference", "--tokens-file", str(tokens),
                                                    *FAST], 2, 1.5, until_seen="SIO connect /media")
    assert refused and {s["kind"] for s in refused} == {"handshake_refused"}


# ------------------------------------------------------------------------- dependent steps and backoff


def most_attempts(seconds: float) -> int:
    """The most logins one user can start in `seconds` under the backoff policy: every wait at its shortest
    (half the exponential delay)."""
    attempts, elapsed = 1, 0.0
    while True:
        elapsed += 0.5 * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempts - 1))
        if elapsed > seconds:
            return attempts
        attempts += 1


def test_a_broken_login_fails_the_socket_criterion_backs_off_and_spares_health(reference_target, tmp_path):
    # one client behind a shared /api limiter, as main without X-Forwarded-For: PINs retried at once would
    # exhaust it (about 80 PIN requests in these 7 s, beside the health checks) and turn health checks into 429s
    target = reference_target("--profile", "baseline", "--seed", "14", "--latency-scale", "0.2",
                              "--fail-route", PIN, "--rate-limit", "75", "--rate-window-s", "60")
    profile = profile_copy(tmp_path, "one-client", {"forwarded_for.enabled": False})
    scenario = scenario_file(tmp_path, "broken-login", {"sockets": 3, "auth": 2, "health": 1},
                             [{"name": "six", "users": 6, "ramp": "1s", "hold": "6s"}], socket_session="2s")
    folder = run_command(tmp_path, scenario, target.url, "--target-profile", str(profile), "--no-report")

    summary = pd.read_csv(folder / "summary.csv")
    by_endpoint = summary.groupby("endpoint")[["requests", "failures", "backoffs", "fail_auth_unavailable",
                                               "unreached"]].sum()
    run = json.loads((folder / "run.json").read_text())
    seconds = run["stages"][0]["steady_end"] - run["stages"][0]["ramp_start"] + 1
    pins = by_endpoint.loc[f"POST {PIN}"]
    assert 5 <= pins.requests <= 5 * most_attempts(seconds), (pins.requests, most_attempts(seconds))
    assert pins.backoffs == pins.requests, "every failed login backs off"
    connects = by_endpoint.loc["SIO connect /media"]
    assert connects.requests == connects.failures == connects.fail_auth_unavailable == connects.unreached > 0
    health = by_endpoint.loc[["GET /api/v1/health", "GET /api/v1/simple-health"]]
    assert health.requests.sum() > 10 and health.failures.sum() == 0

    verdict = json.loads((folder / "verdict.json").read_text())
    criteria = {c["name"]: c for c in verdict["criteria"]}
    assert criteria["Socket.IO connect success"]["status"] == "FAIL"


def test_a_media_flow_stops_at_its_first_failed_step(reference_target):
    target = reference_target("--profile", "baseline", "--seed", "15", "--latency-scale", "0.2",
                              "--fail-route", "/api/v1/media/search")
    samples = run_users(target.url, [MediaUser], ["--target-profile", "reference", *FAST], 3, 2)
    seen = Counter(s["endpoint"] for s in samples)
    assert seen["GET /api/v1/media/search"] >= 6
    assert {s["kind"] for s in samples if s["endpoint"] == "GET /api/v1/media/search"} == {"http_5xx"}
    assert not [e for e in seen if e.startswith(("POST /api/v1/media/request", "GET /api/v1/media/requests"))]


# ----------------------------------------------------------------------------- timeouts and censoring


def test_a_route_hanging_past_the_timeout_shows_a_censored_p95_everywhere(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "16", "--latency-scale", "0.2",
                              "--hang-route", "/api/v1/simple-health")
    profile = profile_copy(tmp_path, "two-seconds", {"timeouts.request_s": 2})
    scenario = scenario_file(tmp_path, "hanging", {"health": 1}, [{"name": "eight", "users": 8, "ramp": "1s",
                                                                   "hold": "6s"}])
    folder = run_command(tmp_path, scenario, target.url, "--target-profile", str(profile))

    run = json.loads((folder / "run.json").read_text())
    assert run["timeouts"]["request_s"] == 2 and run["timeouts"]["request_from"] == "target profile"
    summary = pd.read_csv(folder / "summary.csv")
    hanging = summary[(summary.endpoint == "GET /api/v1/simple-health") & (summary.phase == "steady")].iloc[0]
    assert hanging.fail_timeout == hanging.requests > 0
    assert bool(hanging.p95_censored) and 2000 <= hanging.p95_ms < 2600
    assert pd.isna(hanging.p95_ok_ms), "no successful sample to take a percentile from"
    healthy = summary[(summary.endpoint == "GET /api/v1/health") & (summary.phase == "steady")].iloc[0]
    assert not healthy.p95_censored and healthy.p95_ok_ms == healthy.p95_ms < 1000

    verdict = json.loads((folder / "verdict.json").read_text())
    api_p95 = {c["name"]: c for c in verdict["criteria"]}["API p95"]
    assert api_p95["status"] == "FAIL" and api_p95["measured"].startswith("≥ 2.")
    assert api_p95["measured"].endswith(" s (requests timed out)")
    report = (folder / "report.md").read_text()
    assert api_p95["measured"] in report and "≥ 2" in report

    # a criterion chooses the percentile of successful requests instead: the health checks that answered
    slo = tmp_path / "ok-only.yaml"
    slo.write_text(yaml.safe_dump({"name": "ok-only", "criteria": [
        {"name": "API p95 of successes", "metric": "p95_ok_ms", "endpoint": "api", "critical": "> 1 s",
         "min_requests": 5}]}))
    (ok_only,) = judge_run(folder, load_named(SLO, slo)).results
    assert ok_only.status == "PASS" and ok_only.value < 1000 and not ok_only.worst.censored


def test_plain_locust_and_run_apply_the_same_timeout_rule(reference_target, tmp_path):
    # both health routes hang: every request times out, whichever task a user picks
    target = reference_target("--profile", "baseline", "--seed", "17", "--hang-route", "/api/v1/simple-health",
                              "--hang-route", "/api/v1/health")
    profile = profile_copy(tmp_path, "one-second", {"timeouts.request_s": 1})
    # the rule itself: flag, then scenario, then profile (0: resolve_settings takes the profile's)
    assert timeout_layers(0.5, 3.0) == (0.5, "flag") and timeout_layers(None, 3.0) == (3.0, "scenario")
    assert timeout_layers(None, None) == (0.0, "target profile")
    scenario = parse_scenario({"name": "t", "host": target.url, "stages": [{"name": "a", "users": 1, "hold": 1}],
                               "mix": {"health": 1}, "target_profile": str(profile), "timeouts": {"request": "3s"}},
                              "t.yaml")
    assert harness_options(scenario, None, ()).request_timeout == 3.0
    assert harness_options(scenario, None, (), request_timeout_s=0.5).request_timeout == 0.5

    # the two plain locust runs wait on hanging requests: they run in the background while `run` does the same.
    # -t 8s, not less: Locust's run-time timer may start seconds early on a busy machine (gevent's loop clock is
    # stale after the locustfile's import), and each locust run needs a few timed-out requests
    cases = (([], 1.0), (["--request-timeout", "0.5"], 0.5))
    locusts = []
    for flag, _ in cases:
        out = tmp_path / f"locust{len(flag)}"
        out.mkdir()
        with (out / "stderr.txt").open("w") as stderr:
            locusts.append(subprocess.Popen(
                [LOCUST, "-f", "locustfiles/medianest.py", "--headless", "-u", "1", "-r", "1", "-t", "8s", "-H",
                 target.url, "--only-summary", "--json-file", str(out / "stats"), "--target-profile", str(profile),
                 "HealthUser", *FAST, *flag], stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO_ROOT))
    try:
        for flag, expected_s in cases:
            scenario = scenario_file(tmp_path, f"timeout{len(flag)}", {"health": 1},
                                     [{"name": "one", "users": 1, "ramp": "1s", "hold": "2s"}])
            if flag:  # the flag as `run` parses it
                folder = run_command(tmp_path / f"run{len(flag)}", scenario, target.url, "--target-profile",
                                     str(profile), "--no-report", *flag)
            else:  # no flag: the runner itself (the results need no analysis here)
                folder = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url,
                                                out_root=tmp_path / "run0", target_profile=str(profile),
                                                show_progress=False, gate_stages=False)).execute().folder
            run = json.loads((folder / "run.json").read_text())
            assert run["timeouts"]["request_s"] == expected_s
            assert run["timeouts"]["request_from"] == ("flag" if flag else "target profile")
            summary = pd.read_csv(folder / "summary.csv")
            timed_out = summary[summary.endpoint.str.startswith("GET /api/v1/")]
            assert len(timed_out) and (timed_out.fail_timeout == timed_out.requests).all()
            assert expected_s * 1000 <= timed_out.min_ms.min() <= timed_out.max_ms.max() < expected_s * 1000 + 500

        for (flag, expected_s), locust_run in zip(cases, locusts, strict=True):
            locust_run.wait(timeout=60)
            out = tmp_path / f"locust{len(flag)}"
            # the stats as Locust holds them at its exit (its --csv files are rewritten once a second, and a busy
            # machine's last timed-out request could end after the last rewrite)
            stats = pd.DataFrame(json.loads((out / "stats.json").read_text())).set_index("name")
            hanging = stats.loc[stats.index.str.startswith("/api/v1/")]
            assert len(hanging) and (hanging["num_failures"] == hanging["num_requests"]).all(), \
                (out / "stderr.txt").read_text()[-2000:]
            assert expected_s * 1000 <= hanging["min_response_time"].min() <= hanging["max_response_time"].max() \
                < expected_s * 1000 + 500
    finally:
        for locust_run in locusts:
            locust_run.kill()
            locust_run.wait()


# --------------------------------------------------------------------------------------- frontend host


def test_page_and_asset_requests_go_to_the_frontend_url(reference_target, tmp_path):
    api = reference_target("--profile", "baseline", "--seed", "18", "--latency-scale", "0.2")
    frontend = reference_target("--profile", "baseline", "--seed", "19", "--latency-scale", "0.2", "--bundle-kb", "300")
    profile = profile_copy(tmp_path, "split", {"frontend_url": frontend.url})
    samples = run_users(api.url, [FrontendUser], ["--target-profile", str(profile), *FAST], 2, 2,
                        until_seen="PAGE / (first visit)")
    pages = [s for s in samples if s["endpoint"] == "PAGE / (first visit)"]
    assert pages and all(s["kind"] == "" for s in samples)
    http = [s for s in samples if s["url"]]
    assert http and all(s["url"].startswith(frontend.url + "/") for s in http)
    import httpx

    api_routes = httpx.get(api.url + "/metrics").text
    frontend_routes = httpx.get(frontend.url + "/metrics").text
    assert 'route="/"' in frontend_routes and 'route="/_next/static/:asset"' in frontend_routes
    assert 'route="/"' not in api_routes and "/_next/static" not in api_routes

    elsewhere = profile_copy(tmp_path, "elsewhere", {"frontend_url": "http://frontend.example"})
    refused = run_users(api.url, [FrontendUser], ["--target-profile", str(elsewhere), *FAST], 2, 1)
    assert refused == [], "a frontend host that is neither loopback nor allowed gets no request"
