"""The harness's own options and the settings users run with: declared, checked and handed to users here.

Two callers give options, and both end in resolve_settings():
- the runner (medianest_load/run.py) builds HarnessOptions from the scenario and hands the checked settings to
  the users of its environment (hand_to_users); a worker gets them from its master the same way;
- plain `locust -f locustfiles/medianest.py`: the locustfile registers OPTIONS on Locust's parser
  (register_options), and settings_for() resolves Locust's parsed options once per option set.
Users only ever call settings_for(environment); the user classes (locustfiles/) never parse an option.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import os
import random
import sys
from dataclasses import dataclass, field, fields
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from locust.env import Environment
from locust.runners import WorkerRunner

from medianest_load.host_guard import HostRefused, check_host
from medianest_load.inputs import InputError, load_named
from medianest_load.secrets import register_secret
from medianest_load.target_profile import TARGET_PROFILE, ProfileError, TargetProfile

log = logging.getLogger("medianest_load.users")

HOST_SOURCE = "locust --host"
FRONTEND_SOURCE = "target profile frontend_url"

Given = float | str  # a number as an option gives it: parsed by Locust, or the text of an environment variable


class OptionError(InputError):
    """A bad harness option (flag or its environment variable); one line naming option, value and expectation."""


def _option(default: Any, flag: str, env: str, help: str) -> Any:
    """A HarnessOptions field with how it is given: its flag and environment variable, and its help line."""
    return field(default=default, metadata={"flag": flag, "env": env, "help": help})


@dataclass(frozen=True, kw_only=True)
class HarnessOptions:
    """The harness's options as given, not yet checked: from Locust's parsed options (plain `locust -f`), from
    a scenario (the runner) or from the master (a worker). 0 for a timeout means "the target profile's value":
    the profile is the one place a deployment's limits live."""

    target_profile: str = _option(
        "medianest-main", "--target-profile", "MEDIANEST_TARGET_PROFILE",
        "Target profile: a name in target_profiles/ or a YAML path (routes, namespaces, auth, timeouts).")
    tokens_file: str = _option(
        "", "--tokens-file", "MEDIANEST_TOKENS_FILE",
        "File with one bearer token per line, handed to users round robin (switches auth to tokens).")
    tokens_env: str = _option(
        "", "--tokens-env", "MEDIANEST_TOKENS_ENV",
        "NAME of an environment variable holding one token per line (switches auth to tokens).")
    think_min: Given = _option(1.0, "--think-min", "MEDIANEST_THINK_MIN", "Shortest think time between tasks, seconds.")
    think_max: Given = _option(3.0, "--think-max", "MEDIANEST_THINK_MAX", "Longest think time between tasks, seconds.")
    request_timeout: Given = _option(
        0.0, "--request-timeout", "MEDIANEST_REQUEST_TIMEOUT",
        "Seconds without an answer before a request fails as timeout (0: the target profile's).")
    connect_timeout: Given = _option(
        0.0, "--connect-timeout", "MEDIANEST_CONNECT_TIMEOUT",
        "Seconds to open a connection (HTTP or Socket.IO) before it fails as timeout (0: the profile's).")
    upload_sizes_kb: str = _option(
        "64,512,4096", "--upload-sizes-kb", "MEDIANEST_UPLOAD_SIZES_KB",
        "Upload sizes in KB picked at random, each optionally SIZE:WEIGHT, e.g. 64:6,512:3,4096:1.")
    socket_session_s: Given = _option(
        60.0, "--socket-session-s", "MEDIANEST_SOCKET_SESSION_S",
        "How long a Socket.IO user holds its connection before disconnecting, seconds.")
    api_ttfb: str | bool = _option(
        "off", "--api-ttfb", "MEDIANEST_API_TTFB",
        "on: each API request also records its time to first byte as a `TTFB METHOD route` sample (costs the "
        "generator about 9 % of its requests per CPU-second); off by default.")
    allow_host: str = _option(
        "", "--allow-host", "MEDIANEST_ALLOW_HOSTS",
        "Comma-separated host names besides loopback that this run may load; any other host is refused.")

    @classmethod
    def given(cls, parsed_options: Any = None) -> HarnessOptions:
        """The options in Locust's parsed options; one missing there (or no parsed options at all) comes from its
        environment variable, else its default."""
        values = {}
        for spec in OPTIONS:
            value = getattr(parsed_options, spec.dest, None) if parsed_options is not None else None
            values[spec.dest] = value if value is not None else os.environ.get(spec.env, spec.default)
        return cls(**values)

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """The --allow-host names (env MEDIANEST_ALLOW_HOSTS), comma-separated."""
        return tuple(name.strip() for name in str(self.allow_host or "").split(",") if name.strip())


@dataclass(frozen=True)
class OptionSpec:
    """How one HarnessOptions field is given on Locust's command line and in the environment."""

    dest: str
    default: Any
    flag: str
    env: str
    help: str


OPTIONS = tuple(OptionSpec(option.name, option.default, **option.metadata) for option in fields(HarnessOptions))
SPECS = {spec.dest: spec for spec in OPTIONS}


def register_options(parser: Any, **_: Any) -> None:
    """Add the options to Locust's parser (init_command_line_parser), so `locust -f` and its web UI take them."""
    group = parser.add_argument_group("MediaNest harness")
    for spec in OPTIONS:
        if spec.flag in getattr(parser, "_option_string_actions", {}):
            continue  # the locustfile reached twice under two names: one registration is enough
        group.add_argument(spec.flag, dest=spec.dest, env_var=spec.env, default=spec.default,
                           type=type(spec.default), help=f"{spec.help} Env: {spec.env}.")


# --- the checked settings ------------------------------------------------------------------------------------

class TokenPool:
    """Tokens handed to users round robin. Worker i of N starts at i * ceil(len / N), so each worker hands out
    its own block of the pool before it reaches the next worker's."""

    def __init__(self, tokens: tuple[str, ...], worker_index: int = 0, workers: int = 1) -> None:
        self._tokens = tokens
        self._next = itertools.count(worker_index * math.ceil(len(tokens) / max(workers, 1)))
        for token in tokens:
            register_secret(token)

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._tokens

    def take(self) -> str:
        return self._tokens[next(self._next) % len(self._tokens)]


class AddressPool:
    """One X-Forwarded-For address per user, so a limiter keyed on it sees many clients, not one."""

    def __init__(self, network: str, worker_index: int) -> None:
        self._network = ipaddress.ip_network(network)
        self._span = self._network.num_addresses - 2  # no network or broadcast address
        self._next = itertools.count(worker_index * 65_536)  # workers take disjoint blocks

    def take(self) -> str:
        return str(self._network.network_address + 1 + next(self._next) % self._span)


@dataclass(frozen=True, kw_only=True)
class HarnessSettings:
    """The options of one run, checked, with the target profile and the token pool they name."""

    profile: TargetProfile
    think_min: float
    think_max: float
    request_timeout: float
    connect_timeout: float
    upload_sizes: tuple[tuple[int, float], ...]  # (bytes, weight)
    socket_session_s: float
    tokens: TokenPool | None  # None: users log in through the profile's pin/verify flow
    addresses: AddressPool | None  # None: no per-user X-Forwarded-For
    allowed_hosts: tuple[str, ...] = ()  # besides loopback
    api_ttfb: bool = False  # also time each API request to its first byte (a streamed response)

    @property
    def auth_mode(self) -> str:
        return "tokens" if self.tokens is not None else "login"

    def pick_upload_size(self) -> int:
        sizes, weights = zip(*self.upload_sizes, strict=True)
        return random.choices(sizes, weights)[0]


def resolve_settings(options: HarnessOptions, worker_index: int = 0, workers: int = 1) -> HarnessSettings:
    """Check the options and load what they name. Raises OptionError or ProfileError (both ValueError, one line).
    `worker_index` of `workers` places this process's start in the token pool and its address block."""
    profile = load_named(TARGET_PROFILE, str(options.target_profile))
    think_min = _number("think_min", options.think_min, 0, True)
    think_max = _number("think_max", options.think_max, 0, True)
    if think_max < think_min:
        raise OptionError(f"option --think-max (env MEDIANEST_THINK_MAX): got {think_max:g}, "
                          f"expected at least --think-min ({think_min:g})")
    request_timeout = _number("request_timeout", options.request_timeout, 0, True)
    connect_timeout = _number("connect_timeout", options.connect_timeout, 0, True)
    return HarnessSettings(
        profile=profile,
        think_min=think_min,
        think_max=think_max,
        request_timeout=request_timeout or profile.timeouts.request_s,
        connect_timeout=connect_timeout or profile.timeouts.connect_s,
        upload_sizes=parse_upload_sizes(options.upload_sizes_kb),
        socket_session_s=_number("socket_session_s", options.socket_session_s, 0, False),
        tokens=_token_pool(profile, str(options.tokens_file or ""), str(options.tokens_env or ""), worker_index,
                           workers),
        addresses=AddressPool(profile.forwarded_for.network, worker_index) if profile.forwarded_for.enabled else None,
        allowed_hosts=options.allowed_hosts,
        api_ttfb=_switch("api_ttfb", options.api_ttfb),
    )


SWITCH_WORDS = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


def _switch(dest: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word not in SWITCH_WORDS:
        spec = SPECS[dest]
        raise OptionError(f"option {spec.flag} (env {spec.env}): got {raw!r}, expected on or off")
    return SWITCH_WORDS[word]


def _number(dest: str, raw: Any, low: float, inclusive: bool) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value >= low if inclusive else value > low) or value != value or value == float("inf"):
        spec = SPECS[dest]
        expected = f"a number {'>=' if inclusive else '>'} {low:g}"
        raise OptionError(f"option {spec.flag} (env {spec.env}): got {raw!r}, expected {expected}")
    return value


def parse_upload_sizes(raw: str) -> tuple[tuple[int, float], ...]:
    """'64,512,4096' or '64:6,512:3,4096:1' -> ((bytes, weight), ...)."""
    sizes = []
    for item in str(raw).split(","):
        size, _, weight = item.strip().partition(":")
        try:
            entry = (int(float(size) * 1024), float(weight) if weight else 1.0)
        except ValueError:
            entry = (0, 0.0)
        if entry[0] <= 0 or entry[1] <= 0:
            raise OptionError(f"option --upload-sizes-kb (env MEDIANEST_UPLOAD_SIZES_KB): got {raw!r}, expected "
                              "comma-separated sizes in KB > 0, each optionally SIZE:WEIGHT, e.g. 64:6,512:3,4096:1")
        sizes.append(entry)
    return tuple(sizes)


def _read_tokens(text: str, origin: str) -> tuple[str, ...]:
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise OptionError(f"{origin}: got no tokens, expected one token per line")
    return tokens


def _token_pool(profile: TargetProfile, tokens_file: str, tokens_env: str, worker_index: int,
                workers: int) -> TokenPool | None:
    """An explicit token source (option) wins over the profile; login mode without one means no pool."""
    if not tokens_file and not tokens_env and profile.auth.mode == "tokens":
        tokens_file, tokens_env = profile.auth.tokens_file or "", profile.auth.tokens_env or ""
    if tokens_file:
        try:
            with open(tokens_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise OptionError(f"option --tokens-file: got {tokens_file!r} ({exc.strerror}), "
                              "expected a readable file with one token per line") from None
        except UnicodeDecodeError as exc:
            raise OptionError(f"option --tokens-file: got {tokens_file!r} (not UTF-8: byte {exc.start}), "
                              "expected a UTF-8 text file with one token per line") from None
        return TokenPool(_read_tokens(text, f"option --tokens-file {tokens_file}"), worker_index, workers)
    if tokens_env:
        if tokens_env not in os.environ:
            raise OptionError(f"option --tokens-env: got {tokens_env!r}, an unset variable; "
                              "expected the name of a variable holding one token per line")
        return TokenPool(_read_tokens(os.environ[tokens_env], f"option --tokens-env {tokens_env}"), worker_index,
                         workers)
    return None


# --- how users find their settings ---------------------------------------------------------------------------

# Settings a caller handed to an environment's users (the runner, a worker's setup), and the settings resolved
# from an environment's parsed options (plain `locust -f`) with the option set they were resolved from.
_HANDED: WeakKeyDictionary[Environment, HarnessSettings] = WeakKeyDictionary()
_RESOLVED: WeakKeyDictionary[Environment, tuple[tuple[HarnessOptions, int, int], HarnessSettings | ValueError]] = \
    WeakKeyDictionary()


def hand_to_users(environment: Environment, settings: HarnessSettings) -> None:
    """From now on, users of this environment run with these settings, whatever its parsed options say."""
    _HANDED[environment] = settings


def worker_slot(environment: Environment) -> tuple[int, int]:
    """(this worker's index, the number of workers). A worker learns its index when it joins the master and
    the master's --expect-workers (--processes N sets it to N) with its first spawn message; a worker beyond
    that count shares a block with another one. Not distributed: (0, 1)."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return 0, 1
    index = max(runner.worker_index, 0)  # -1 until the master has acknowledged this worker
    expected = getattr(environment.parsed_options, "expect_workers", 1)
    return index, max(expected if isinstance(expected, int) else 1, index + 1)


def settings_for(environment: Environment) -> HarnessSettings:
    """The settings this environment's users run with: those handed to it, else its parsed options resolved once
    per option set (the web UI may change options between runs). Bad options are logged once, then raised
    (OptionError or ProfileError) to every user that asks."""
    handed = _HANDED.get(environment)
    if handed is not None:
        return handed
    worker_index, workers = worker_slot(environment)
    options = HarnessOptions.given(environment.parsed_options)
    key = (options, worker_index, workers)
    cached = _RESOLVED.get(environment)
    if cached is None or cached[0] != key:
        try:
            result: HarnessSettings | ValueError = resolve_settings(options, worker_index, workers)
        except (OptionError, ProfileError) as exc:
            log.error("%s", exc)
            result = exc
        cached = _RESOLVED[environment] = (key, result)
    if isinstance(cached[1], ValueError):
        raise cached[1]
    return cached[1]


# --- the host guard for users --------------------------------------------------------------------------------

def host_refusal(host: str | None, allowed: tuple[str, ...], source: str = HOST_SOURCE) -> HostRefused | None:
    """Why this host may not be loaded (not loopback and not allowed), or None. No host: None (Locust itself
    refuses to run without one; a profile without frontend_url uses the host)."""
    if not host:
        return None
    try:
        check_host(host, allowed, source)
    except HostRefused as exc:
        return exc
    return None


def frontend_refusal(settings: HarnessSettings) -> HostRefused | None:
    """Why the profile's frontend_url may not be loaded (the same guard and allow-list as the host), or None."""
    return host_refusal(settings.profile.frontend_url, settings.allowed_hosts, FRONTEND_SOURCE)


def allowed_hosts_for(environment: Environment) -> tuple[str, ...]:
    """The allow-list this environment's users run with: the handed settings', else the parsed options' (also
    when the other options are bad: a host is refused all the same)."""
    handed = _HANDED.get(environment)
    return handed.allowed_hosts if handed is not None else HarnessOptions.given(environment.parsed_options).allowed_hosts


def check_options_at_init(environment: Environment, **_: Any) -> None:
    """Locust's init event. Plain `locust -f` (the only caller that sets environment.locustfile): a bad option or
    profile, or a host or frontend that is neither loopback nor allowed, ends the run with one line before any
    user starts. Embedding callers check with resolve_settings() and check_host() themselves; here they only get
    the logged line, and users that cannot start stop."""
    if environment.parsed_options is None:
        return
    try:
        refused = frontend_refusal(settings_for(environment))
    except (OptionError, ProfileError):
        if environment.locustfile:
            sys.exit(1)  # already logged as one line
        refused = None
    refused = refused or host_refusal(environment.host, allowed_hosts_for(environment))
    if refused is not None:
        log.error("%s", refused)
        if environment.locustfile:
            sys.exit(1)


def check_host_at_test_start(environment: Environment, **_: Any) -> None:
    """Locust's test_start event. The web UI can change the host between runs: a refused host is logged as one
    line and the run stopped (plain `locust -f`); its users stop in on_start, before any request, wherever they
    run."""
    refused = host_refusal(environment.host, allowed_hosts_for(environment))
    if refused is None:
        return
    log.error("%s", refused)
    runner = environment.runner
    if environment.locustfile and runner is not None and not isinstance(runner, WorkerRunner):
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn(runner.quit if headless else runner.stop)  # after start() returns: its users stop at once
