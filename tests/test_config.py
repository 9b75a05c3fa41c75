"""Configuration: the factory, create_storage_from_env and every variable of docs/configuration.md."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, StorageFactory, StorageInterface, create_storage_from_env
from connectome_storage.config import ENV_VARIABLES, redact_url
from connectome_storage.errors import ConfigError


def test_defaults_without_any_variable() -> None:
    storage = create_storage_from_env({})
    assert isinstance(storage, FileStorage)
    settings = storage.settings
    assert (settings.base_dir, settings.create_backups, settings.pretty_print_json) == (
        Path("./storage_data"),
        True,
        True,
    )
    assert (settings.max_backup_files, settings.connection_timeout, settings.default_cache_ttl) == (5, 30.0, None)


def test_file_variables_are_read() -> None:
    storage = create_storage_from_env(
        {
            "CONNECTOME_STORAGE_TYPE": "FILE",
            "CONNECTOME_STORAGE_BASE_DIR": "/srv/memory",
            "CONNECTOME_STORAGE_CREATE_BACKUPS": "No",
            "CONNECTOME_STORAGE_PRETTY_JSON": "off",
            "CONNECTOME_STORAGE_TIMEOUT": "2.5",
            "CONNECTOME_STORAGE_MAX_BACKUPS": "0",
            "CONNECTOME_STORAGE_CACHE_TTL": "60",
            # Variables of other backends are validated, then ignored.
            "CONNECTOME_STORAGE_DB_PATH": "/srv/x.db",
            "CONNECTOME_STORAGE_WAL_MODE": "1",
            "CONNECTOME_STORAGE_REDIS_URL": "redis://127.0.0.1:1/0",
            "CONNECTOME_STORAGE_KEY_PREFIX": "app:",
        }
    )
    settings = storage.settings
    assert settings.base_dir == Path("/srv/memory")
    assert (settings.create_backups, settings.pretty_print_json) == (False, False)
    assert (settings.connection_timeout, settings.max_backup_files, settings.default_cache_ttl) == (2.5, 0, 60.0)


@pytest.mark.parametrize("text", ["true", "TRUE", "1", "yes", "On", " on "])
def test_true_spellings(text: str) -> None:
    assert create_storage_from_env({"CONNECTOME_STORAGE_PRETTY_JSON": text}).settings.pretty_print_json is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONNECTOME_STORAGE_CREATE_BACKUPS", "maybe"),
        ("CONNECTOME_STORAGE_PRETTY_JSON", ""),
        ("CONNECTOME_STORAGE_WAL_MODE", "2"),
        ("CONNECTOME_STORAGE_TIMEOUT", "soon"),
        ("CONNECTOME_STORAGE_TIMEOUT", "0"),
        ("CONNECTOME_STORAGE_TIMEOUT", "nan"),
        ("CONNECTOME_STORAGE_MAX_BACKUPS", "-1"),
        ("CONNECTOME_STORAGE_MAX_BACKUPS", "2.5"),
        ("CONNECTOME_STORAGE_CACHE_TTL", "-5"),
        ("CONNECTOME_STORAGE_REDIS_URL", "http://localhost"),
        ("CONNECTOME_STORAGE_BASE_DIR", ""),
        ("CONNECTOME_STORAGE_TIPE", "file"),
    ],
)
def test_every_set_variable_is_validated_whichever_backend(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "file", variable: value})
    assert variable in str(caught.value)


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known backends: file, .*postgres, redis, sqlite"):
        create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "mongo"})
    with pytest.raises(ConfigError, match="'mongo'"):
        StorageFactory.create_storage("mongo", {})


def test_every_documented_variable_is_known() -> None:
    documented = {
        "CONNECTOME_STORAGE_BASE_DIR", "CONNECTOME_STORAGE_DB_PATH", "CONNECTOME_STORAGE_CREATE_BACKUPS",
        "CONNECTOME_STORAGE_PRETTY_JSON", "CONNECTOME_STORAGE_WAL_MODE", "CONNECTOME_STORAGE_TIMEOUT",
        "CONNECTOME_STORAGE_MAX_BACKUPS", "CONNECTOME_STORAGE_REDIS_URL", "CONNECTOME_STORAGE_KEY_PREFIX",
        "CONNECTOME_STORAGE_CACHE_TTL", "CONNECTOME_STORAGE_BACKUP_RETENTION", "CONNECTOME_STORAGE_SERIALIZER",
        "CONNECTOME_STORAGE_ENCRYPTION_KEY", "CONNECTOME_STORAGE_POSTGRES_DSN", "CONNECTOME_STORAGE_REDIS_CLUSTER",
    }  # fmt: skip
    assert documented <= set(ENV_VARIABLES)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    for variable in ENV_VARIABLES:
        assert f"`{variable}`" in docs, f"docs/configuration.md must describe {variable}"


def test_factory_refuses_keys_the_backend_does_not_take() -> None:
    with pytest.raises(ConfigError, match="'db_path'") as caught:
        StorageFactory.create_storage("file", {"base_dir": "x", "db_path": "y.db"})
    assert "base_dir" in str(caught.value)  # the message lists what is accepted


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_backup_files", "lots"),
        ("connection_timeout", -1),
        ("create_backups", "perhaps"),
        ("clock", 5),
        ("default_cache_ttl", 0),
    ],
)
def test_factory_refuses_unparseable_values(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        StorageFactory.create_storage("file", {key: value})


def test_a_typical_factory_config_is_accepted(tmp_path: Path) -> None:
    storage = StorageFactory.create_storage(
        "file", {"base_dir": str(tmp_path), "create_backups": True, "pretty_print_json": True, "max_backup_files": 5}
    )
    assert isinstance(storage, FileStorage) and storage.base_dir == tmp_path


async def test_register_backend(tmp_path: Path) -> None:
    class Recording(FileStorage):
        backend_name = "recording"

    StorageFactory.register_backend("recording", Recording)
    try:
        storage = create_storage_from_env(
            {"CONNECTOME_STORAGE_TYPE": "recording", "CONNECTOME_STORAGE_BASE_DIR": str(tmp_path)}
        )
        assert type(storage) is Recording
        async with storage:
            await storage.store_system_state("k", 1)
            assert (await storage.health_check())["backend"] == "recording"
    finally:
        StorageFactory._backends.pop("recording")


def test_register_backend_refuses_non_storage_classes() -> None:
    with pytest.raises(ConfigError):
        StorageFactory.register_backend("bad", dict)  # type: ignore[arg-type]
    assert "bad" not in StorageFactory.available_backends()


def test_storage_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        StorageInterface()  # type: ignore[abstract]


# ------------------------------------------------------------ newer settings


def test_backup_retention_defaults_to_seven_days_and_is_read() -> None:
    assert create_storage_from_env({}).settings.backup_retention == 604800.0  # type: ignore[attr-defined]
    storage = create_storage_from_env({"CONNECTOME_STORAGE_BACKUP_RETENTION": "3600"})
    assert storage.settings.backup_retention == 3600.0  # type: ignore[attr-defined]
    assert StorageFactory.create_storage("file", {"backup_retention": 1.5}).settings.backup_retention == 1.5  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["0", "-1", "week", "inf"])
def test_backup_retention_must_be_positive_seconds(value: str) -> None:
    with pytest.raises(ConfigError, match="CONNECTOME_STORAGE_BACKUP_RETENTION"):
        create_storage_from_env({"CONNECTOME_STORAGE_BACKUP_RETENTION": value})


def test_backup_retention_belongs_to_the_file_tree_only() -> None:
    with pytest.raises(ConfigError, match="'backup_retention'"):
        StorageFactory.create_storage("sqlite", {"backup_retention": 60})
    # As a variable it is validated, then ignored by the other backends.
    storage = create_storage_from_env(
        {"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_BACKUP_RETENTION": "60"}
    )
    assert not hasattr(storage.settings, "backup_retention")


def test_serializer_json_and_msgpack_are_accepted_on_sqlite_redis_and_postgres_only() -> None:
    storage = create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "sqlite", "CONNECTOME_STORAGE_SERIALIZER": "JSON"})
    assert storage.settings.serializer == "json"  # type: ignore[attr-defined]
    for backend in ("sqlite", "redis", "postgres"):
        built = StorageFactory.create_storage(backend, {"serializer": "msgpack"})
        assert built.settings.serializer == "msgpack"  # type: ignore[attr-defined]
    for backend in ("redis", "postgres"):
        environ = {"CONNECTOME_STORAGE_TYPE": backend, "CONNECTOME_STORAGE_SERIALIZER": " MsgPack "}
        assert create_storage_from_env(environ).settings.serializer == "msgpack"  # type: ignore[attr-defined]
    # The file tree is always JSON: the variable is validated, then ignored; the key is refused.
    assert not hasattr(create_storage_from_env({"CONNECTOME_STORAGE_SERIALIZER": "msgpack"}).settings, "serializer")
    with pytest.raises(ConfigError, match="CONNECTOME_STORAGE_SERIALIZER='pickle' is not a serializer"):
        create_storage_from_env({"CONNECTOME_STORAGE_SERIALIZER": "pickle"})
    with pytest.raises(ConfigError, match="'serializer'"):
        StorageFactory.create_storage("file", {"serializer": "json"})


def test_redis_cluster_and_wait_replicas_are_parsed() -> None:
    storage = create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "redis", "CONNECTOME_STORAGE_REDIS_CLUSTER": "no"})
    assert storage.settings.cluster is False  # type: ignore[attr-defined]
    storage = create_storage_from_env(
        {"CONNECTOME_STORAGE_TYPE": "redis", "CONNECTOME_STORAGE_REDIS_CLUSTER": "yes",
         "CONNECTOME_STORAGE_REDIS_WAIT_REPLICAS": "1"}
    )  # fmt: skip
    assert storage.settings.cluster is True and storage.settings.wait_replicas == 1  # type: ignore[attr-defined]
    assert storage.supports("sharded")
    with pytest.raises(ConfigError, match="CONNECTOME_STORAGE_REDIS_CLUSTER='sometimes' is not a boolean"):
        create_storage_from_env({"CONNECTOME_STORAGE_REDIS_CLUSTER": "sometimes"})
    with pytest.raises(ConfigError, match="CONNECTOME_STORAGE_REDIS_WAIT_REPLICAS='-1' must be 0 or more"):
        create_storage_from_env({"CONNECTOME_STORAGE_REDIS_WAIT_REPLICAS": "-1"})
    with pytest.raises(ConfigError, match="redis\\+cluster://HOST:PORT"):
        StorageFactory.create_storage("redis", {"redis_url": "cluster://h:1"})
    assert StorageFactory.create_storage("redis", {"redis_url": "rediss+cluster://h:1"}).settings.redis_url


def test_postgres_dsn_is_validated_without_showing_its_password() -> None:
    create_storage_from_env({"CONNECTOME_STORAGE_POSTGRES_DSN": "postgresql://bob:pw@db:5432/mem"})  # ignored by file
    with pytest.raises(ConfigError) as caught:
        create_storage_from_env({"CONNECTOME_STORAGE_POSTGRES_DSN": "mysql://bob:hunter2@db/mem"})
    message = str(caught.value)
    assert "CONNECTOME_STORAGE_POSTGRES_DSN" in message and "mysql://bob:***@db/mem" in message
    assert "hunter2" not in message


KEY_32 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize("value", ["c2hvcnQ=", "not base64 at all!", base64.b64encode(bytes(31)).decode(), ""])
def test_a_malformed_encryption_key_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_storage_from_env({"CONNECTOME_STORAGE_ENCRYPTION_KEY": value})
    message = str(caught.value)
    assert "CONNECTOME_STORAGE_ENCRYPTION_KEY" in message and "32 random bytes" in message
    assert not value or value not in message


def test_a_wellformed_encryption_key_turns_encryption_on(tmp_path: Path) -> None:
    from connectome_storage.middleware import Encryption

    storage = create_storage_from_env(
        {"CONNECTOME_STORAGE_ENCRYPTION_KEY": KEY_32, "CONNECTOME_STORAGE_BASE_DIR": str(tmp_path)}
    )
    (encryption,) = storage.settings.middleware
    assert isinstance(encryption, Encryption) and encryption.key_id == Encryption(bytes(range(32))).key_id
    assert KEY_32 not in repr(storage.settings) and KEY_32 not in repr(encryption)
    # Not a config-dict option: in code, encryption is a middleware.
    with pytest.raises(ConfigError, match="'encryption_key'"):
        StorageFactory.create_storage("file", {"encryption_key": KEY_32})


def test_an_unknown_backend_variable_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "mongo"})
    assert "CONNECTOME_STORAGE_TYPE='mongo'" in str(caught.value)
    assert re.search(r"known backends: file, .*redis, sqlite", str(caught.value))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0?password=s3cret", "redis://127.0.0.1:6379/0?password=***"),
        ("redis://:s3cret@host:1/0", "redis://:***@host:1/0"),
        ("rediss://user:s3cret@host/0?a=1&password=s3cret&b=2", "rediss://user:***@host/0?a=1&password=***&b=2"),
        ("redis://s3cret@host", "redis://***@host"),
        ("redis://user:p@s3cret@host/0", "redis://user:***@host/0"),
        ("unix:///tmp/redis.sock?db=1&password=s3cret", "unix:///tmp/redis.sock?db=1&password=***"),
        ("postgresql://bob:s3cret@db/mem", "postgresql://bob:***@db/mem"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_redact_url_hides_every_form_of_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://:s3cret@localhost/0",
        "http://localhost/0?password=s3cret",
        "redis://:s3cret@[::1/0",  # does not parse: refused here, not by the driver later
        "redis://:s3cret@localhost:port/0",
    ],
)
def test_a_bad_redis_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_storage_from_env({"CONNECTOME_STORAGE_REDIS_URL": url})
    assert "CONNECTOME_STORAGE_REDIS_URL" in str(caught.value) and "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        StorageFactory.create_storage("redis", {"redis_url": url})
    assert "redis_url" in str(caught.value) and "s3cret" not in str(caught.value)


def test_settings_repr_never_shows_a_password() -> None:
    from connectome_storage.config import RedisSettings, resolve_settings

    settings = resolve_settings(RedisSettings, {"redis_url": "redis://user:s3cret-pw@127.0.0.1:6379/0"}, "redis")
    assert settings.redis_url.endswith("@127.0.0.1:6379/0")
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
