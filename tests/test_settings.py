"""`chat-engine serve` options: one table, one validation for flags and their
`CHAT_ENGINE_*` twins, and start-up failures as one line with exit status 2."""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.actors.supervisor import EngineConfig
from gateway.app import GatewaySettings
from gateway.cli import build_parser, create_engine
from gateway.settings import (
    SERVE_OPTIONS,
    Option,
    RateLimit,
    SettingsError,
    add_options,
    markdown_table,
    pick,
    resolve,
)
from gateway.ws import WsSettings
from persistence.store import Store
from tests.conftest import ADMIN_TOKEN, start_server

ROOT = Path(__file__).resolve().parent.parent
CHAT_ENGINE = str(Path(sys.executable).parent / "chat-engine")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_ENGINE_")}
    return {**env, **extra}


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAT_ENGINE, *args], capture_output=True, text=True, timeout=60, env=clean_env(**env)
    )


@pytest.fixture(autouse=True)
def no_engine_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CHAT_ENGINE_"):
            monkeypatch.delenv(name)


def parse(*args: str) -> Any:
    return build_parser().parse_args(["serve", *args])


# A value of each option other than its default (switches are given as true).
SAMPLES = {
    "host": "0.0.0.0",
    "port": "9999",
    "data_dir": "/srv/chat",
    "fsync": "interval",
    "snapshot_interval": "5",
    "snapshot_records": "10",
    "presence_timeout": "30",
    "resume_window": "60",
    "public_url": "https://chat.example",
    "rate_limit": "2.5/10",
    "registration_rate_limit": "off",
    "cors_origins": "https://shop.example",
    "forwarded_allow_ips": "10.0.0.0/8",
    "webhook_allow": "hooks.example.com,10.0.0.0/8",
    "history_limit": "10",
    "ws_sessions_per_token": "off",
    "ws_sessions_per_address": "5",
    "max_connections": "500",
    "http_connections_per_address": "off",
    "session_queue": "20",
    "session_queue_bytes": "65536",
    "session_queue_budget": "1048576",
    "flush_interval": "0.01",
    "log_level": "debug",
    "http1_server": "hypercorn",
    "http2": "off",
    "gc_thresholds": "700,10,10",
    "redis": "redis://10.0.0.5:6379/2",
    "redis_prefix": "shop-chat",
    "redis_log_length": "5000",
}


@pytest.mark.parametrize("option", SERVE_OPTIONS, ids=lambda option: option.flag)
def test_each_variable_gives_what_its_flag_gives(
    option: Option, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = getattr(parse(), option.dest)
    if option.switch:
        assert default is False and getattr(parse(option.flag), option.dest) is True
        monkeypatch.setenv(option.env, "TRUE")
        assert getattr(parse(), option.dest) is True
        monkeypatch.setenv(option.env, "off")
        assert getattr(parse(), option.dest) is False
        return
    sample = SAMPLES[option.dest]  # a new option needs a sample here
    from_flag = getattr(parse(option.flag, sample), option.dest)
    assert from_flag != default
    monkeypatch.setenv(option.env, sample)
    assert getattr(parse(), option.dest) == from_flag


def test_a_flag_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_ENGINE_PORT", "9999")
    assert parse("--port", "1234").port == 1234
    monkeypatch.setenv("CHAT_ENGINE_PORT", "")  # empty counts as unset
    assert parse().port == 8080


def test_parsed_values() -> None:
    options = parse(
        "--rate-limit",
        "20/100",
        "--cors-origins",
        "https://Shop.example/, http://localhost:3000",
        "--forwarded-allow-ips",
        "127.0.0.1, 10.0.0.0/8",
    )
    assert options.rate_limit == RateLimit(20.0, 100)
    assert options.cors_origins == ("https://shop.example", "http://localhost:3000")
    assert options.forwarded_allow_ips == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert parse("--rate-limit", "OFF").rate_limit is None
    assert parse("--ws-sessions-per-token", "Off").ws_sessions_per_token is None
    assert parse("--ws-sessions-per-address", "7").ws_sessions_per_address == 7
    assert parse().http_connections_per_address == "auto"
    assert parse("--http-connections-per-address", "AUTO").http_connections_per_address == "auto"
    assert parse("--http-connections-per-address", "40").http_connections_per_address == 40
    with pytest.raises(SettingsError, match="an integer, at least 1, or off"):
        parse("--ws-sessions-per-address", "0")
    defaults = parse()
    assert (defaults.ws_sessions_per_token, defaults.ws_sessions_per_address) == (20, 100)
    assert defaults.cors_origins == () and defaults.in_memory is False


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "abc"], {}, "--port (or CHAT_ENGINE_PORT) must be an integer from 0 to 65535"),
        ([], {"CHAT_ENGINE_PORT": "70000"}, "--port (or CHAT_ENGINE_PORT) must be an integer"),
        ([], {"CHAT_ENGINE_IN_MEMORY": "tru"}, "--in-memory (or CHAT_ENGINE_IN_MEMORY) must be"),
        (
            ["--in-memory"],
            {"CHAT_ENGINE_FSYNC": "bogus"},
            "--fsync (or CHAT_ENGINE_FSYNC) must be one of always, interval, off",
        ),
        (["--rate-limit", "20"], {}, "--rate-limit (or CHAT_ENGINE_RATE_LIMIT) must be RATE/BURST"),
        (["--rate-limit", "0/5"], {}, "must be RATE/BURST"),
        (["--cors-origins", "shop.example"], {}, "must be a comma-separated list of origins"),
        (["--cors-origins", "https://shop.example/path"], {}, "list of origins"),
        (["--forwarded-allow-ips", "10.0.0.0/99"], {}, "list of IP addresses or CIDRs"),
        (["--webhook-allow", "hooks/example"], {}, "list of host names, IP addresses or CIDRs"),
        (["--public-url", "chat.example"], {}, "must be an http:// or https:// URL"),
        (["--presence-timeout", "0"], {}, "a number of seconds above 0"),
        (["--flush-interval", "nan"], {}, "a number of seconds at least 0"),
        (["--gc-thresholds", "1,2"], {}, "three integers"),
        (["--log-level", "loud"], {}, "one of debug, info, warning, error, critical"),
    ],
)
def test_a_bad_value_is_refused_with_its_rule(
    args: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        parse(*args)
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("text", ["true", "1", "YES", "On", " false ", "0", "no", "OFF"])
def test_booleans_take_six_words_in_any_case(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_ENGINE_DEMO", text)
    assert parse().demo is (text.strip().lower() in ("true", "1", "yes", "on"))


@pytest.mark.parametrize("text", ["tru", "t", "y", "2", "enabled"])
def test_any_other_boolean_is_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_ENGINE_DEMO", text)
    with pytest.raises(SettingsError):
        parse()


def test_serve_with_no_flags_runs_on_the_defaults_the_settings_have_alone() -> None:
    # A test or an embedding that builds EngineConfig(), WsSettings(), Store(...) or
    # GatewaySettings(...) itself must get what `chat-engine serve` gets with no flags.
    options = parse("--in-memory")
    assert create_engine(options).config == EngineConfig()
    store = inspect.signature(Store).parameters
    assert (options.fsync, options.snapshot_interval, options.snapshot_records) == (
        store["fsync"].default,
        store["snapshot_interval"].default,
        store["snapshot_records"].default,
    )
    ws = WsSettings()
    assert (
        options.session_queue,
        options.session_queue_bytes,
        options.session_queue_budget,
        options.flush_interval,
    ) == (ws.queue_limit, ws.queue_bytes, ws.queue_budget, ws.flush_interval)
    assert options.rate_limit == GatewaySettings(admin_token_hash="").rate_limit


def test_the_readme_flag_table_is_the_option_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, (
        "README.md's flag table differs from gateway.settings.SERVE_OPTIONS; "
        "regenerate it with: .venv/bin/python -m gateway.settings"
    )


# -- real processes ---------------------------------------------------------------------


def test_a_bad_port_is_the_same_line_from_the_flag_and_the_variable() -> None:
    from_flag = run("serve", "--in-memory", "--port", "abc")
    from_env = run("serve", "--in-memory", CHAT_ENGINE_PORT="abc")
    for result in (from_flag, from_env):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert from_flag.stderr == from_env.stderr
    assert from_flag.stderr == (
        "chat-engine: --port (or CHAT_ENGINE_PORT) must be an integer from 0 to 65535; got 'abc'\n"
    )


def test_a_misspelt_boolean_and_a_bad_choice_do_not_start() -> None:
    result = run("serve", CHAT_ENGINE_IN_MEMORY="tru")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "CHAT_ENGINE_IN_MEMORY" in result.stderr and "'tru'" in result.stderr
    result = run("serve", "--in-memory", CHAT_ENGINE_FSYNC="bogus")
    assert result.returncode == 2 and "--fsync" in result.stderr and "'bogus'" in result.stderr


def test_a_busy_port_is_one_line_and_status_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--in-memory", "--port", str(port))
    assert result.returncode == 2
    assert (
        result.stderr == f"chat-engine: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_an_unusable_data_dir_is_one_line_and_status_2(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for env in ({}, {"CHAT_ENGINE_ADMIN_TOKEN": "given"}):  # the data-dir lock refuses first
        result = run("serve", "--port", "0", "--data-dir", str(not_a_dir), **env)
        assert result.returncode == 2
        assert result.stderr == (
            f"chat-engine: data directory {not_a_dir} does not exist or is not a directory\n"
        )
    result = run("serve", "--port", "0", "--data-dir", str(not_a_dir / "below"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_version_and_usage_errors() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"chat-engine \d+\.\d+\.\d+\S*\n", result.stdout)
    result = run("serve", "--no-such-flag")
    assert result.returncode == 2 and result.stderr == (
        "chat-engine: unrecognized arguments: --no-such-flag (see chat-engine --help)\n"
    )
    help_text = run("serve", "--help").stdout
    assert "CHAT_ENGINE_RATE_LIMIT" in help_text and "default: 20/100" in help_text


async def test_a_variable_that_names_no_option_is_logged(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)  # a variable-only setting
    monkeypatch.setenv("CHAT_ENGINE_PROT", "9000")  # a typo of CHAT_ENGINE_PORT
    # the suite's own switches, which CI sets for every process, are not options
    monkeypatch.setenv("CHAT_ENGINE_REQUIRE_REDIS", "1")
    with caplog.at_level(logging.WARNING, logger="chat_engine"):
        await start_server(nursery)
    ignored = [record.getMessage() for record in caplog.records if "names no option" in record.msg]
    assert ignored == ["ignored: CHAT_ENGINE_PROT names no option"]


def test_another_command_can_take_rows_of_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, pick("--data-dir", "--log-level"))
    monkeypatch.setenv("CHAT_ENGINE_DATA_DIR", "/srv/chat")
    options = parser.parse_args(["--log-level", "WARNING"])
    resolve(options, os.environ)
    assert (options.data_dir, options.log_level) == ("/srv/chat", "warning")


def test_an_address_that_cannot_be_bound_is_one_line_and_status_2() -> None:
    result = run("serve", "--in-memory", "--host", "203.0.113.7", "--port", "8080")  # TEST-NET-3
    assert result.returncode == 2
    assert result.stderr == (
        "chat-engine: cannot listen on 203.0.113.7:8080: Cannot assign requested address\n"
    )
