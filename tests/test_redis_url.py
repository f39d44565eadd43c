"""One string names where Redis is: a single server, a Sentinel-watched primary or a Cluster.
Hostile or mistyped addresses are refused with the part named, and never echo a password."""

from __future__ import annotations

import pytest

from vestnik.streams.config import ConfigError, load
from vestnik.streams.redis_url import RedisUrlError, from_parts, parse, redacted


def test_single_server_urls_keep_their_database():
    assert parse("redis://127.0.0.1:6380/3").db == 3
    assert parse("redis://:pw@127.0.0.1:6380").db == 0
    assert parse("unix:///run/redis.sock?db=2").db == 2
    assert parse("rediss://h:1/0").tls


def test_sentinel_url_names_nodes_primary_db_and_credentials():
    a = parse("redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380/mymaster/4"
              "?sentinel_password=sp")
    assert a.kind == "sentinel"
    assert a.nodes == (("10.0.0.1", 26379), ("::1", 26380))
    assert (a.primary, a.db, a.username, a.password, a.sentinel_password) == (
        "mymaster", 4, "app", "s@cret", "sp")
    assert parse("rediss+sentinel://h:1/m").tls


def test_cluster_url_names_seed_nodes():
    a = parse("redis+cluster://:pw@h1:7000,h2:7001")
    assert a.kind == "cluster" and a.nodes == (("h1", 7000), ("h2", 7001))
    assert a.password == "pw"


@pytest.mark.parametrize("url, part", [
    ("http://h:1", "must start with"),
    ("redis+sentinel://h:1", "names the primary"),
    ("redis+sentinel://h:1/", "names the primary"),
    ("redis+sentinel://h:1/m/x", "database number"),
    ("redis+sentinel://h:1/m/1/2", "database number"),
    ("redis+sentinel://h/m", "is not host:port"),
    ("redis+sentinel://h:99999/m", "out of range"),
    ("redis+sentinel://h:1,,h:2/m", "is not host:port"),
    ("redis+sentinel://h:1/bad name/0", "names the primary"),
    ("redis+sentinel://h:1/m?password=x", "unknown parameter"),
    ("redis+cluster://h:1/0", "no path"),
    ("redis+cluster://h;rm -rf:1", "is not host:port"),
    ("redis+cluster://" + "a" * 300 + ":1", "is not host:port"),
])
def test_bad_addresses_are_refused_naming_the_part(url: str, part: str):
    with pytest.raises(RedisUrlError, match=part):
        parse(url)


def test_an_error_never_echoes_the_password():
    with pytest.raises(RedisUrlError) as e:
        parse("redis+sentinel://:hunter2@h:1,h:x/m")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("url", [
    "redis://:hunter2@h:1/0",
    "redis+sentinel://u:hunter2@h:1,h:2/m/0",
    "redis+sentinel://h:1/m?sentinel_password=hunter2",
    "redis+cluster://:hunter2@h:1,h:2",
    "redis://h:1/0?password=hunter2",
])
def test_redacted_hides_every_password(url: str):
    shown = redacted(url)
    assert "hunter2" not in shown and "***" in shown


def test_sentinel_and_cluster_settings_become_one_url():
    assert from_parts(sentinels=["s1", "s2:26380"], primary="m", cluster=[]) == \
        "redis+sentinel://s1:26379,s2:26380/m"
    assert from_parts(sentinels=[], primary=None, cluster=["c1:7000"]) == \
        "redis+cluster://c1:7000"
    with pytest.raises(RedisUrlError, match="redis_master"):
        from_parts(sentinels=["s1"], primary=None, cluster=[])
    with pytest.raises(RedisUrlError, match="not both"):
        from_parts(sentinels=["s1"], primary="m", cluster=["c1:1"])


def test_config_takes_sentinels_from_the_environment():
    c = load({"VESTNIK_REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380",
              "VESTNIK_REDIS_MASTER": "vestnik", "VESTNIK_REDIS_WAIT_REPLICAS": "1"})
    assert c.redis_url == "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/vestnik"
    assert c.redis_wait_replicas == 1


@pytest.mark.parametrize("env, key", [
    ({"VESTNIK_REDIS_SENTINELS": "h:1"}, "redis_master"),
    ({"VESTNIK_REDIS_SENTINELS": "h:1", "VESTNIK_REDIS_MASTER": "m",
      "VESTNIK_REDIS_URL": "redis://h:1/0"}, "redis_url"),
    ({"VESTNIK_REDIS_URL": "redis+sentinel://h:1"}, "VESTNIK_REDIS_URL"),
    ({"VESTNIK_REDIS_WAIT_REPLICAS": "-1"}, "VESTNIK_REDIS_WAIT_REPLICAS"),
    ({"VESTNIK_REDIS_WAIT_REPLICAS": "many"}, "VESTNIK_REDIS_WAIT_REPLICAS"),
])
def test_config_errors_name_the_setting(env: dict[str, str], key: str):
    with pytest.raises(ConfigError, match=key):
        load(env)
