"""`medianest-load target` (and `python -m reference_target`): serve the reference target. Only click is
imported here; uvicorn, starlette and socketio load when the command runs, so the CLI starts fast."""

from __future__ import annotations

import click

from medianest_load.one_line_errors import OneLineErrors, UsageProblem

_FROM_PROFILE = "[default: from the profile]"


def _override(name: str, kind: type, help_text: str):
    return click.option(name, type=kind, default=None, help=f"{help_text} {_FROM_PROFILE}")


@click.command("target", cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on; 0 picks a free one (printed on the 'listening on' line).")
@click.option("--profile", default="baseline", show_default=True,
              help="Behaviour profile from reference_target/profiles.yaml: baseline, optimized, degraded, leaky, "
                   "bloated-bundle, rate-limited, relay, knee. The flags below override it.")
@_override("--latency-scale", float, "Multiply every service time by F (> 0).")
@_override("--error-rate", float, "Fraction of /api requests answered HTTP 500 (0-1; health routes exempt).")
@_override("--stall-rate", float, "Fraction of /api requests never answered until the client gives up (0-1).")
@_override("--stall-max-s", float, "Longest a stalled request is held before a 504.")
@_override("--pool-size", int, "Database pool connections; DB-backed work beyond it queues.")
@_override("--pool-timeout-s", float, "Longest wait for a pool connection before a 503.")
@_override("--crosstalk", float, "Growth of each DB service time per other request in the database (active or "
                                 "queued): 0.02 = +2 % each; 0 = off.")
@_override("--cache-ttl-s", float, "Dashboard stats cache TTL per user in seconds (0 = never cached).")
@_override("--rate-limit", int, "Requests per window per client on /api (X-Forwarded-For, else peer IP); 0 = off.")
@_override("--rate-window-s", float, "Rate-limit window in seconds.")
@click.option("--push-source", type=click.Choice(["server", "relay"]), default=None,
              help="server: the target pushes media-status to joined rooms; relay: it forwards a client's media-status "
                   f"to the other members of its room, as MediaNest main does. {_FROM_PROFILE}")
@click.option("--fail-route", "fail_routes", multiple=True, metavar="TEMPLATE",
              help="A route template (e.g. /api/v1/auth/plex/pin) that always answers HTTP 500; repeatable.")
@click.option("--hang-route", "hang_routes", multiple=True, metavar="TEMPLATE",
              help="A route template that never answers until the client gives up (or --stall-max-s); repeatable.")
@click.option("--socket-auth-error", is_flag=True, default=False,
              help="Fail every /media handshake with an internal error (connect_error 'Internal server error'), as "
                   "MediaNest main's socket auth did without its database client.")
@_override("--push-interval-s", float, "Seconds between media-status pushes to each joined /media room.")
@_override("--push-latency-ms", float, "Delay between stamping a media-status event (sentAt) and emitting it.")
@_override("--bundle-kb", int, "Total size of the frontend's static chunks in KB.")
@_override("--max-upload-mb", float, "Largest accepted upload in MB; larger answers 413.")
@_override("--leak-kb-per-connection", int, "KB kept (never freed) per Socket.IO connection; 0 = no leak.")
@_override("--leak-kb-per-request", int, "KB kept (never freed) per /api request; 0 = no leak.")
@_override("--stall-window-s", float, "A pause of S seconds, repeating (--stall-every-s), that every HTTP request "
           "arriving or answered inside it waits out, like a GC pause or a blocked event loop; 0 = off.")
@_override("--stall-every-s", float, "Seconds from one pause (--stall-window-s) to the next; longer than the pause.")
@click.option("--seed", type=int, default=None,
              help="Seed for service times and faults (reproducible); random if omitted.")
@click.option("--metrics-token", envvar="METRICS_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on /metrics (env METRICS_TOKEN); open if omitted.")
@click.option("--enforce-csrf", is_flag=True, default=False,
              help="Require the double-submit CSRF token on POST/PUT/PATCH/DELETE: the csrf-token cookie plus the "
                   "same value in the x-csrf-token header or a JSON body's csrfToken; 403 otherwise. Off by default.")
@click.option("--third-party-script", default=None, metavar="URL",
              help="Reference a script on another host from the page (an analytics tag), to check that the harness's "
                   "browsers block every request off the target. None by default.")
@click.option("--exit-with-parent", is_flag=True, default=False,
              help="Exit when the process that started the target goes away (the launcher sets it).")
def target(profile: str, **options: object) -> None:
    """Serve the reference target, a local stand-in for MediaNest (HTTP routes, Socket.IO, /metrics), until
    SIGINT or SIGTERM. Prints 'reference target listening on http://HOST:PORT' once it accepts connections."""
    from reference_target.config import ConfigError, load_config

    try:
        cfg = load_config(profile, options)
    except ConfigError as exc:
        if exc.option:
            raise click.BadParameter(str(exc).removeprefix(f"Invalid value for '{exc.option}': "),
                                     param_hint=f"'{exc.option}'") from None
        raise UsageProblem(str(exc)) from None

    from reference_target.server import bind, serve

    try:
        sock = bind(cfg.host, cfg.port)
    except OSError as exc:
        raise UsageProblem(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    serve(cfg, sock)
