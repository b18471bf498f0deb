"""Configuration: defaults, ``${ENV}`` interpolation, errors naming the YAML path, masked secrets."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

import pydantic
import pytest

from adapters.outbound.slack import SlackConfig
from bridge.config import ListenerConfig, Settings, load_config, parse_config
from bridge.errors import ConfigError

SLACK_TOKEN = "xoxb-0000000000-1111111111-SyntheticConfigToken"
WEBHOOK_SECRET = "whsec_c3ludGhldGljLXdlYmhvb2stc2lnbmluZy1rZXktMzJi"
HEADER_SECRET = "Bearer synthetic-header-credential"
LISTENER_TOKEN = "synthetic-listener-token"


def slack(**overrides: Any) -> dict[str, Any]:
    return {"type": "slack", "token": SLACK_TOKEN, "channel": "C0SYNTH01", **overrides}


def config_error(data: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return info.value


# -- defaults -----------------------------------------------------------------------------


def test_no_file_gives_one_mllp_listener_http_and_everything_to_the_inbox() -> None:
    settings = load_config(None, env={})

    assert [(x.name, x.port) for x in settings.listeners] == [("default", 2575)]
    assert settings.http.port == 8080
    assert [(r.match.types, r.channels) for r in settings.routes] == [(["*"], ["inbox"])]
    assert {name: cfg.type for name, cfg in settings.channels.items()} == {"inbox": "inbox"}
    assert settings.store.backend == "sqlite"


def test_empty_yaml_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("# nothing configured yet\n", encoding="utf-8")

    assert load_config(path, env={}) == load_config(None, env={})


# -- interpolation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        pytest.param("${HOST}", {"HOST": "10.1.2.3"}, "10.1.2.3", id="set"),
        pytest.param("${HOST:-127.0.0.1}", {}, "127.0.0.1", id="default-when-unset"),
        pytest.param("${HOST:-127.0.0.1}", {"HOST": "10.1.2.3"}, "10.1.2.3", id="env-beats-default"),
        pytest.param("${HOST:-}", {}, "", id="empty-default"),
        pytest.param("node-${N}.${DOMAIN}", {"N": "7", "DOMAIN": "test"}, "node-7.test", id="inside-a-string"),
        pytest.param("plain.host", {}, "plain.host", id="no-variable"),
    ],
)
def test_env_interpolation(value: str, env: dict[str, str], expected: str) -> None:
    assert parse_config({"http": {"host": value}}, env=env).http.host == expected


def test_interpolated_number_is_validated_as_a_number() -> None:
    settings = parse_config({"listeners": [{"name": "adt", "port": "${ADT_PORT}"}]}, env={"ADT_PORT": "2600"})

    assert settings.listeners[0].port == 2600


def test_interpolation_reaches_channel_settings() -> None:
    settings = parse_config(
        {"channels": {"icu": slack(token="${SLACK_TOKEN}")}, "routes": [{"name": "r", "channels": ["icu"]}]},
        env={"SLACK_TOKEN": SLACK_TOKEN},
    )

    icu = settings.channels["icu"]
    assert isinstance(icu, SlackConfig)
    assert icu.token.get_secret_value() == SLACK_TOKEN


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param({"channels": {"icu": slack(token="${SLACK_TOKEN}")}}, "channels.icu.token", id="mapping"),
        pytest.param(
            {"listeners": [{"name": "a"}, {"name": "b", "host": "${B_HOST}"}]}, "listeners[1].host", id="list"
        ),
        pytest.param({"routes": [{"name": "r", "channels": ["${CH}"]}]}, "routes[0].channels[0]", id="list-item"),
    ],
)
def test_unset_variable_names_the_yaml_path(data: dict[str, Any], path: str) -> None:
    error = config_error(data)

    assert error.path == path
    assert "not set" in str(error)


# -- errors name the YAML path ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param(
            {"routes": [{"name": "r", "channels": ["nowhere"]}]},
            "routes[0].channels[0]",
            id="unknown-channel",
        ),
        pytest.param(
            {
                "routes": [
                    {"name": "r", "channels": ["inbox"]},
                    {"name": "s", "channels": ["inbox", "nowhere"]},
                ]
            },
            "routes[1].channels[1]",
            id="unknown-channel-later",
        ),
        pytest.param({"channels": {"x": {"type": "carrier-pigeon"}}}, "channels.x.type", id="unknown-channel-type"),
        pytest.param({"channels": {"x": {"phi": "none"}}}, "channels.x", id="channel-without-type"),
        pytest.param({"channels": {"icu": slack(channel="#general")}}, "channels.icu.channel", id="channel-field"),
        pytest.param({"channels": {"icu": slack(colour="red")}}, "channels.icu.colour", id="channel-unknown-key"),
        pytest.param(
            {"listeners": [{"name": "adt", "port": 2575}, {"name": "adt", "port": 2576}]},
            "listeners[1].name",
            id="duplicate-listener-name",
        ),
        pytest.param(
            {"listeners": [{"name": "adt", "port": 2575}, {"name": "oru", "port": 2575}]},
            "listeners[1].port",
            id="duplicate-listener-port",
        ),
        pytest.param({"http": {"port": 70000}}, "http.port", id="port-out-of-range"),
        pytest.param({"routes": [{"name": "r", "channels": []}]}, "routes[0].channels", id="route-without-channels"),
        pytest.param(
            {"listeners": [{"name": "a", "charset_fallback": "klingon"}]},
            "listeners[0].charset_fallback",
            id="unknown-codec",
        ),
        pytest.param({"stroe": {}}, "stroe", id="misspelt-section"),
    ],
)
def test_invalid_config_error_names_the_yaml_path(data: dict[str, Any], path: str) -> None:
    error = config_error(data)

    assert error.path == path
    assert str(error).startswith(f"{path}: ")


def test_same_port_on_different_hosts_and_http_only_listeners_are_allowed() -> None:
    settings = parse_config(
        {
            "listeners": [
                {"name": "a", "host": "127.0.0.1", "port": 2575},
                {"name": "b", "host": "10.0.0.1", "port": 2575},
                {"name": "c", "port": None},
                {"name": "d", "port": None},
            ]
        },
        env={},
    )

    assert [x.port for x in settings.listeners] == [2575, 2575, None, None]


def test_invalid_yaml_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("http:\n  port: 8080\n  host: [unclosed\nlisteners: []\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    assert info.value.path == str(path)
    assert "line 4" in str(info.value)


def test_unreadable_file_error_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})

    assert info.value.path == str(missing)


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("- listeners\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="top level"):
        load_config(path, env={})


def test_file_is_loaded_interpolated_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "channels:\n"
        "  icu:\n"
        "    type: slack\n"
        "    token: ${SLACK_TOKEN}\n"
        "    channel: C0SYNTH01\n"
        "routes:\n"
        "  - name: critical\n"
        "    match: {types: ['result.*'], min_severity: critical}\n"
        "    channels: [icu]\n",
        encoding="utf-8",
    )

    settings = load_config(path, env={"SLACK_TOKEN": SLACK_TOKEN})

    assert list(settings.channels) == ["icu"]
    assert settings.routes[0].match.min_severity.value == "critical"


# -- secrets ------------------------------------------------------------------------------


def test_secrets_are_masked_in_repr_and_str() -> None:
    settings = parse_config(
        {
            "listeners": [{"name": "adt", "http_token": LISTENER_TOKEN}],
            "channels": {
                "icu": slack(),
                "hook": {
                    "type": "webhook",
                    "url": "https://hooks.test/ehr",
                    "secret": WEBHOOK_SECRET,
                    "headers": {"Authorization": HEADER_SECRET},
                },
            },
            "routes": [{"name": "r", "channels": ["icu", "hook"]}],
        },
        env={},
    )

    for shown in (repr(settings), str(settings), repr(settings.channels), repr(settings.listeners[0])):
        for secret in (SLACK_TOKEN, WEBHOOK_SECRET.removeprefix("whsec_"), HEADER_SECRET, LISTENER_TOKEN):
            assert secret not in shown
    assert isinstance(settings.listeners[0], ListenerConfig)
    assert settings.listeners[0].http_token is not None
    assert settings.listeners[0].http_token.get_secret_value() == LISTENER_TOKEN


def test_invalid_secret_is_not_echoed_in_the_error() -> None:
    wrong = "not-a-bot-token-synthetic-secret"

    error = config_error({"channels": {"icu": slack(token=wrong)}})

    assert error.path == "channels.icu.token"
    assert wrong not in str(error)


def test_settings_are_immutable() -> None:
    settings = Settings()

    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.http = settings.http  # type: ignore[misc]


def test_inbox_console_refuses_full_phi_because_stdout_is_a_log() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"channels": {"inbox": {"type": "inbox", "phi": "full"}}}, env={})
    assert err.value.path.startswith("channels.inbox")
    assert "console" in str(err.value)
    ok = parse_config({"channels": {"inbox": {"type": "inbox", "phi": "full", "console": False}}}, env={})
    assert ok.channels["inbox"].phi.value == "full"


# -- templates: locale per channel, time zone ---------------------------------------------


def inboxes(*names: str, **options: Any) -> dict[str, Any]:
    return {name: {"type": "inbox", "console": False, **options.get(name, {})} for name in names}


def test_templates_default_to_english_and_utc() -> None:
    settings = parse_config({}, env={})

    assert (settings.templates.locale, settings.templates.timezone) == ("en", "UTC")
    assert settings.templates.zone == UTC  # no time zone database needed for the default
    assert settings.channel_locales() == {"inbox": "en"}


def test_a_channel_takes_its_own_locale_else_its_routes_else_the_default() -> None:
    settings = parse_config(
        {
            "templates": {"locale": "de", "timezone": "Europe/Berlin"},
            "channels": inboxes("own", "routed", "plain", own={"locale": "en"}),
            "routes": [
                {"name": "a", "channels": ["own", "routed"], "locale": "en"},
                {"name": "b", "channels": ["routed", "plain"]},
            ],
        },
        env={},
    )

    assert settings.channel_locales() == {"own": "en", "routed": "en", "plain": "de"}
    assert str(settings.templates.zone) == "Europe/Berlin"


def test_two_routes_may_give_a_channel_the_same_locale() -> None:
    settings = parse_config(
        {
            "channels": inboxes("icu"),
            "routes": [
                {"name": "a", "channels": ["icu"], "locale": "de"},
                {"name": "b", "channels": ["icu"], "locale": "de"},
            ],
        },
        env={},
    )

    assert settings.channel_locales() == {"icu": "de"}


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        pytest.param(
            {
                "channels": inboxes("icu"),
                "routes": [
                    {"name": "a", "channels": ["icu"], "locale": "de"},
                    {"name": "b", "channels": ["icu"], "locale": "en"},
                ],
            },
            "routes[1].locale",
            "channel 'icu' already has locale 'de' from routes[0].locale",
            id="two-routes-disagree",
        ),
        pytest.param(
            {
                "channels": inboxes("icu", icu={"locale": "de"}),
                "routes": [{"name": "a", "channels": ["icu"], "locale": "en"}],
            },
            "routes[0].locale",
            "channel 'icu' already has locale 'de' from channels.icu.locale",
            id="route-contradicts-channel",
        ),
        pytest.param({"templates": {"locale": "fr"}}, "templates.locale", "no templates for locale 'fr'", id="default"),
        pytest.param(
            {"channels": inboxes("icu", icu={"locale": "fr"}), "routes": []},
            "channels.icu.locale",
            "no templates for locale 'fr' (available: de, en)",
            id="channel",
        ),
        pytest.param(
            {"channels": inboxes("icu"), "routes": [{"name": "a", "channels": ["icu"], "locale": "fr"}]},
            "routes[0].locale",
            "no templates for locale 'fr'",
            id="route",
        ),
        pytest.param(
            {"channels": inboxes("icu", icu={"locale": "../en"}), "routes": []},
            "channels.icu.locale",
            "pattern",
            id="not-a-locale-name",
        ),
        pytest.param({"templates": {"timezone": "Mars/Olympus"}}, "templates.timezone", "Mars/Olympus", id="zone"),
        pytest.param({"templates": {"timezone": "../etc/passwd"}}, "templates.timezone", "IANA", id="zone-path"),
    ],
)
def test_locale_and_time_zone_errors_name_the_yaml_path(data: dict[str, Any], path: str, message: str) -> None:
    error = config_error(data)

    assert error.path == path
    assert message in str(error)


def test_a_site_locale_in_the_mapping_folders_is_known(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "fr.yaml").write_text("events: {}\n", encoding="utf-8")
    data = {"mapping": {"extra_paths": [str(tmp_path)]}, "templates": {"locale": "fr"}}

    assert parse_config(data, env={}).channel_locales() == {"inbox": "fr"}


# -- mapping: the sender's time zone, extra paths (review #4 findings 11 and 18) -------------------


@pytest.mark.parametrize(
    ("data", "sender"),
    [
        pytest.param({}, "UTC", id="both-default"),
        pytest.param({"templates": {"timezone": "Europe/Berlin"}}, "Europe/Berlin", id="from-templates"),
        pytest.param(
            {"templates": {"timezone": "Europe/Berlin"}, "mapping": {"sender_timezone": "America/New_York"}},
            "America/New_York",
            id="own",
        ),
        pytest.param({"mapping": {"sender_timezone": "Asia/Tokyo"}}, "Asia/Tokyo", id="own-templates-default"),
    ],
)
def test_the_sender_time_zone_defaults_to_the_time_zone_times_are_shown_in(data: dict[str, Any], sender: str) -> None:
    settings = parse_config(data, env={})
    assert settings.mapping.sender_timezone == sender
    assert str(settings.mapping.sender_zone) == sender


def test_a_mapping_config_object_without_a_sender_zone_takes_the_templates_zone() -> None:
    from bridge.config import MappingConfig, TemplatesConfig

    settings = Settings(mapping=MappingConfig(), templates=TemplatesConfig(timezone="Europe/Berlin"))
    assert settings.mapping.sender_timezone == "Europe/Berlin"
    own = Settings(mapping=MappingConfig(sender_timezone="UTC"), templates=TemplatesConfig(timezone="Europe/Berlin"))
    assert own.mapping.sender_timezone == "UTC"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param({"mapping": {"sender_timezone": "Mars/Olympus"}}, "mapping.sender_timezone", id="sender"),
        pytest.param({"mapping": {"sender_timezone": "../etc/passwd"}}, "mapping.sender_timezone", id="sender-path"),
        # A bad display zone is named once, where it is written, not again as the sender's default.
        pytest.param({"templates": {"timezone": "Mars/Olympus"}}, "templates.timezone", id="templates"),
    ],
)
def test_an_unknown_sender_time_zone_names_its_yaml_path(data: dict[str, Any], path: str) -> None:
    error = config_error(data)
    assert error.path == path
    assert "unknown IANA time zone" in str(error)


def test_a_missing_extra_mapping_path_is_named_by_its_index(tmp_path: Path) -> None:
    error = config_error({"mapping": {"extra_paths": [str(tmp_path), str(tmp_path / "nowhere")]}})
    assert error.path == "mapping.extra_paths[1]"
    assert "no such file or folder" in str(error) and "nowhere" in str(error)
    (tmp_path / "site.yaml").write_text("extends: adt.yaml\n", encoding="utf-8")
    ok = parse_config({"mapping": {"extra_paths": [str(tmp_path), str(tmp_path / "site.yaml")]}}, env={})
    assert ok.mapping.extra_paths == [tmp_path, tmp_path / "site.yaml"]
