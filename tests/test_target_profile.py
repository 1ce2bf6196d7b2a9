"""Target profiles and the harness options: the shipped profiles load, and every mistake is one line that names
the file (or option), the field, the bad value and what was expected."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import locust  # noqa: F401  (gevent patching first, as in conftest)
import pytest
import yaml

from medianest_load.inputs import load_named
from medianest_load.paths import LOCUSTFILE, TARGET_PROFILES_DIR
from medianest_load.settings import HarnessOptions, OptionError, parse_upload_sizes, resolve_settings
from medianest_load.target_profile import TARGET_PROFILE, ProfileError

LOCUST = str(Path(sys.executable).with_name("locust"))


def test_shipped_profiles_load_and_differ_only_where_the_reference_target_does():
    main, reference = load_named(TARGET_PROFILE, "medianest-main"), load_named(TARGET_PROFILE, "reference")
    assert main.routes.media_request_detail == "/api/v1/media/requests/:id"
    assert main.routes.media_upload == "/api/v1/media/upload"
    assert main.socketio.path == "/socket.io" and main.socketio.media_namespace == "/media"
    assert main.auth.mode == "login" and main.metrics.token_env == "METRICS_TOKEN"
    assert (main.timeouts.request_s, main.timeouts.connect_s) == (10, 5)
    assert not main.forwarded_for.enabled and reference.forwarded_for.enabled
    # main relays media-status between clients; the reference target pushes by itself (or relays, on request)
    assert main.socketio.push.source == "relay" and reference.socketio.push.source == "server"
    assert (main.routes, replace(main.socketio, push=reference.socketio.push), main.auth, main.timeouts) == (
        reference.routes, reference.socketio, reference.auth, reference.timeouts)
    assert load_named(TARGET_PROFILE, TARGET_PROFILES_DIR / "reference.yaml") == reference


def edited(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((TARGET_PROFILES_DIR / "medianest-main.yaml").read_text())
    edit(data)
    path = tmp_path / "staging.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("edit, field, value", [
    (lambda d: d["routes"].update(health="api/v1/health"), "routes.health", "'api/v1/health'"),
    (lambda d: d["routes"].pop("session"), "routes.session", None),
    (lambda d: d["routes"].update(media_request_detail="/api/v1/media/requests/{id}"),
     "routes.media_request_detail", "'/api/v1/media/requests/{id}'"),
    (lambda d: d["socketio"].update(trasports=["websocket"]), "socketio.trasports", "'trasports'"),
    (lambda d: d["auth"].update(mode="oauth"), "auth.mode", "'oauth'"),
    (lambda d: d["auth"].update(mode="tokens"), "auth.mode", "'tokens'"),
    (lambda d: d["forwarded_for"].update(network="10.0.0.300/8"), "forwarded_for.network", "'10.0.0.300/8'"),
    (lambda d: d["timeouts"].update(request_s=0), "timeouts.request_s", "0"),
    (lambda d: d.update(timeouts="10s"), "timeouts", "'10s'"),
    (lambda d: d.update(extra=1), "extra", "'extra'"),
])
def test_a_bad_profile_is_one_line_naming_file_field_value_and_expectation(tmp_path, edit, field, value):
    path = edited(tmp_path, edit)
    with pytest.raises(ProfileError) as caught:
        load_named(TARGET_PROFILE, str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: got {value or 'nothing'}, expected ")


def test_unknown_names_and_broken_yaml_are_one_line_too(tmp_path):
    with pytest.raises(ProfileError, match=r"^staging: \(file\): got no such file, expected a path to a YAML target "
                                           r"profile .* or one of the names .*medianest-main"):
        load_named(TARGET_PROFILE, "staging")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nroutes: [unclosed\n")
    with pytest.raises(ProfileError, match=rf"^{broken}: \(YAML\) line 3, column 1: got text that is not valid YAML "
                                           r"\(.+\), expected a YAML target profile"):
        load_named(TARGET_PROFILE, str(broken))


def test_options_resolve_against_the_profile_and_bad_ones_are_one_line(tmp_path, monkeypatch):
    options = HarnessOptions(target_profile="reference", request_timeout=0.0, connect_timeout=2.5)
    settings = resolve_settings(options)
    assert (settings.request_timeout, settings.connect_timeout) == (10, 2.5), "0 means the profile's value"
    assert settings.auth_mode == "login" and settings.tokens is None

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# staging tokens\nalpha\n\nbeta\n")
    settings = resolve_settings(replace(options, tokens_file=str(tokens)))
    assert settings.auth_mode == "tokens" and [settings.tokens.take() for _ in range(3)] == ["alpha", "beta", "alpha"]

    monkeypatch.setenv("STAGING_TOKENS", "gamma\n")
    assert resolve_settings(replace(options, tokens_env="STAGING_TOKENS")).tokens.take() == "gamma"

    with pytest.raises(OptionError, match=r"^option --tokens-env: got 'NO_SUCH_TOKENS_VARIABLE', an unset variable"):
        resolve_settings(replace(options, tokens_env="NO_SUCH_TOKENS_VARIABLE"))


def test_a_non_string_key_or_a_file_that_is_not_utf8_is_one_line(tmp_path):
    main = (TARGET_PROFILES_DIR / "medianest-main.yaml").read_text()
    numbered = tmp_path / "numbered.yaml"
    numbered.write_text(main + "1: x\n")
    with pytest.raises(ProfileError, match=rf"^{numbered}: 1: got 1, expected one of the known keys: auth, "):
        load_named(TARGET_PROFILE, str(numbered))
    nested = tmp_path / "nested.yaml"
    nested.write_text(main.replace("  request_s: 10\n", "  request_s: 10\n  true: 5\n"))
    with pytest.raises(ProfileError, match=rf"^{nested}: timeouts.True: got True, expected one of the known keys: "):
        load_named(TARGET_PROFILE, str(nested))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(main.replace("MediaNest main branch", "MediaNest main, caf\u00e9").encode("latin-1"))
    with pytest.raises(ProfileError, match=rf"^{latin1}: \(file\): got bytes that are not UTF-8 text \(byte \d+\), "
                                           "expected a YAML target profile"):
        load_named(TARGET_PROFILE, str(latin1))


def test_a_tokens_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_bytes(b"alpha\n\xff\xfebeta\n")
    with pytest.raises(OptionError) as caught:
        resolve_settings(HarnessOptions(target_profile="reference", tokens_file=str(tokens)))
    assert str(caught.value) == (f"option --tokens-file: got {str(tokens)!r} (not UTF-8: byte 6), "
                                 "expected a UTF-8 text file with one token per line")


def test_workers_start_in_their_own_block_of_the_token_pool(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("t0\nt1\nt2\nt3\nt4\n")
    options = HarnessOptions(target_profile="reference", tokens_file=str(tokens))

    def handed_out(worker_index: int, workers: int, count: int = 3) -> list[str]:
        pool = resolve_settings(options, worker_index, workers).tokens
        return [pool.take() for _ in range(count)]

    assert handed_out(0, 1, 6) == ["t0", "t1", "t2", "t3", "t4", "t0"]
    # 5 tokens over 2 workers: blocks of 3, so the first users of the two workers never share a token
    assert handed_out(0, 2) == ["t0", "t1", "t2"] and handed_out(1, 2) == ["t3", "t4", "t0"]
    assert [handed_out(i, 5, 1)[0] for i in range(5)] == ["t0", "t1", "t2", "t3", "t4"]


def test_upload_sizes_take_optional_weights():
    assert parse_upload_sizes("64,512,4096") == ((65536, 1.0), (524288, 1.0), (4194304, 1.0))
    assert parse_upload_sizes("16:3, 0.5:1") == ((16384, 3.0), (512, 1.0))
    for bad in ("", "64,,512", "64:x", "-1", "64:0"):
        with pytest.raises(OptionError, match=r"^option --upload-sizes-kb .*: got .*, expected comma-separated"):
            parse_upload_sizes(bad)


def test_plain_locust_stops_on_a_bad_profile_with_one_line_and_no_traceback(tmp_path):
    path = edited(tmp_path, lambda d: d["auth"].update(mode="oauth"))
    done = subprocess.run([LOCUST, "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "5s", "-H",
                           "http://127.0.0.1:9", "--target-profile", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{path}: auth.mode: got 'oauth', expected one of login, tokens" in errors[0]
    assert "Traceback" not in done.stderr
