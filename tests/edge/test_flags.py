# edge/flags.py: the one table of `edge run` flags, and everything derived from it (the `edge run` parser, the
# EDGE_* variables and RunSettings, the worker's command line and its parser), checked table by table.
from __future__ import annotations

import argparse
import os

import msgspec
import pytest

from edge import cli
from edge.flags import (
    BOOL,
    CHOICE,
    KINDS,
    PATHS,
    RUN_FLAGS,
    TEXT,
    WORKER_FLAGS,
    env_name,
    given_flags,
    parse_worker_args,
    worker_arguments,
)
from edge.settings import RunSettings, build_settings

DEFAULTS = build_settings({}, {})
# flag name → (the value as given on the command line or in its variable, the RunSettings value it becomes); every
# value differs from the default, so that the test sees it arrive.
SAMPLES: dict[str, tuple[str, object]] = {
    "config": ("a" + os.pathsep + "b", ("a", "b")),
    "workers": ("3", 3),
    "port-map": ("80=8080,443=0", {80: 8080, 443: 0}),
    "status-port": ("1", 1),
    "metrics-port": ("0", 0),
    "admin-port": ("3", 3),
    "admin-bind": ("::1", "::1"),
    "gateway-labels": ("app=edge", {"app": "edge"}),
    "gateway-class": ("istio,other", "istio,other"),
    "gateway-namespace": ("foo", "foo"),
    "root-namespace": ("mesh-root", "mesh-root"),
    "credentials-dir": ("/c", "/c"),
    "access-log": ("-", "-"),
    "access-log-format": ("json", "json"),
    "access-log-template": ('{"code": "%RESPONSE_CODE%"}', '{"code": "%RESPONSE_CODE%"}'),
    "drain-timeout": ("2.5", 2.5),
    "drain-delay": ("1", 1.0),
    "http10": ("reject", False),
    "shadow-host-suffix": ("yes", True),
    "server-header": ("edge", "edge"),
    "cluster-domain": ("corp", "corp"),
    "request-headers-timeout": ("3", 3.0),
    "stream-idle-timeout": ("0", 0.0),
    "idle-timeout": ("60", 60.0),
    "max-connections-per-worker": ("7", 7),
    "http-codec": ("httptools", "httptools"),
    "num-trusted-proxies": ("2", 2),
    "preserve-external-request-id": ("on", True),
    "dns-refresh-rate": ("30", 30.0),
    "jwks-refresh-interval": ("60", 60.0),
    "proxy-protocol": ("true", True),
    "http2-max-concurrent-streams": ("50", 50),
    "http2-initial-stream-window-size": ("131072", 131072),
    "http2-initial-connection-window-size": ("2097152", 2097152),
    "http2-max-active-streams-per-worker": ("500", 500),
}
# A template in the JSON encoding needs --access-log-format json beside it.
COMPANIONS = {"access-log-template": {"access_log_format": "json"}}


def ids(flags):
    return [flag.name for flag in flags]


def test_names_are_unique_and_kinds_known():
    assert len({flag.name for flag in RUN_FLAGS}) == len(RUN_FLAGS)
    assert {flag.kind for flag in RUN_FLAGS} <= set(KINDS)
    assert all(flag.choices for flag in RUN_FLAGS if flag.kind == CHOICE)


@pytest.mark.parametrize("flag", RUN_FLAGS, ids=ids(RUN_FLAGS))
def test_every_flag_has_a_variable_by_the_one_rule(flag):
    assert env_name(flag.option) == "EDGE_" + flag.name.upper().replace("-", "_")
    assert flag.option == "--" + flag.name and flag.dest == flag.name.replace("-", "_")


def test_the_table_and_run_settings_have_the_same_fields():
    assert sorted(flag.attribute for flag in RUN_FLAGS) == sorted(field.name for field in msgspec.structs.fields(RunSettings))


def test_the_table_defaults_are_run_settings_defaults():
    assert DEFAULTS == RunSettings(workers=os.cpu_count() or 1)


@pytest.mark.parametrize("flag", [f for f in RUN_FLAGS if f.default], ids=ids(f for f in RUN_FLAGS if f.default))
def test_the_help_states_the_default(flag):
    if flag.kind != BOOL:  # a switch is off unless given
        assert flag.default in flag.help


def test_every_flag_has_a_sample():
    assert sorted(SAMPLES) == sorted(flag.name for flag in RUN_FLAGS)


@pytest.mark.parametrize("flag", RUN_FLAGS, ids=ids(RUN_FLAGS))
def test_a_flag_reaches_its_setting_from_the_command_line_and_from_its_variable(flag):
    text, expected = SAMPLES[flag.name]
    assert getattr(DEFAULTS, flag.attribute) != expected
    companion = COMPANIONS.get(flag.name, {})
    from_variable = build_settings(companion, {env_name(flag.option): text})
    assert getattr(from_variable, flag.attribute) == expected
    argv = ["run", flag.option] if flag.kind == BOOL else ["run", f"{flag.option}={text}"]
    if flag.kind == PATHS:
        argv = ["run", *(token for path in text.split(os.pathsep) for token in (flag.option, path))]
    args = cli._parser().parse_args(argv)
    from_flag = build_settings({**given_flags(args), **companion}, {env_name(flag.option): "?"})  # the flag wins
    assert getattr(from_flag, flag.attribute) == expected


def test_edge_run_takes_exactly_the_table():
    run = cli._parser()._subparsers._group_actions[0].choices["run"]
    options = [action for action in run._actions if action.dest != "help"]
    assert [action.option_strings for action in options] == [[flag.option] for flag in RUN_FLAGS]
    assert [action.help for action in options] == [flag.help for flag in RUN_FLAGS]
    assert all(action.default is None for action in options)  # not given: the variable or the default decides


# ------------------------------------------------------------------------------------------------- the worker


WORKER_NAMESPACE_DEFAULTS = {
    "credentials_dir": None,
    "access_log": "off",
    "access_log_format": "text",
    "access_log_template": "",
    "http_codec": "auto",
    "stats_shm": None,
}


def test_worker_flags_have_text_values():
    assert [flag.name for flag in WORKER_FLAGS] == ["credentials-dir", "access-log", "access-log-format", "access-log-template", "http-codec"]
    assert {flag.kind for flag in WORKER_FLAGS} <= {TEXT, CHOICE}


def test_the_worker_namespace_when_only_the_required_flags_are_given():
    args = parse_worker_args(["--slot", "2", "--control-fd", "7", "--table-shm", "edge-table-1"])
    assert args == argparse.Namespace(slot=2, control_fd=7, table_shm="edge-table-1", **WORKER_NAMESPACE_DEFAULTS)


def test_the_worker_command_line_of_the_defaults():
    argv = worker_arguments(DEFAULTS, slot=0, control_fd=5, table_shm="t")
    assert argv == [
        "--slot", "0", "--control-fd", "5", "--table-shm", "t",
        "--credentials-dir=/etc/edge/credentials", "--access-log=off", "--access-log-format=text", "--http-codec=auto",
    ]  # fmt: skip
    assert parse_worker_args(argv) == argparse.Namespace(
        slot=0, control_fd=5, table_shm="t", **{**WORKER_NAMESPACE_DEFAULTS, "credentials_dir": "/etc/edge/credentials"}
    )


@pytest.mark.parametrize(
    "settings",
    [
        RunSettings(credentials_dir="/c", access_log="-", access_log_format="json", access_log_template='{"a": "%START_TIME%"}', http_codec="httptools"),
        RunSettings(access_log="/var/log/edge.log", access_log_template="-%RESPONSE_CODE% --x"),  # values that look like flags
        RunSettings(credentials_dir=""),  # left out: the worker has none, as before
    ],
)
def test_worker_flags_round_trip_through_the_worker_parser(settings):
    args = parse_worker_args(worker_arguments(settings, slot=1, control_fd=9, table_shm="t", stats_shm="s"))
    assert (args.slot, args.control_fd, args.table_shm, args.stats_shm) == (1, 9, "t", "s")
    for flag in WORKER_FLAGS:
        value = getattr(settings, flag.attribute)
        assert getattr(args, flag.dest) == (value if value else flag.worker_value_default)


@pytest.mark.parametrize("flag", [f for f in WORKER_FLAGS if f.choices], ids=ids(f for f in WORKER_FLAGS if f.choices))
def test_the_worker_parser_refuses_what_the_table_refuses(flag, capsys):
    with pytest.raises(SystemExit):
        parse_worker_args(["--slot", "0", "--control-fd", "5", "--table-shm", "t", f"{flag.option}=nope"])
    assert "invalid choice" in capsys.readouterr().err
