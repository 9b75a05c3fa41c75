"""Configuration: the factory, create_storage_from_env and every variable of DESIGN section 6."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectome_storage import FileStorage, StorageFactory, StorageInterface, create_storage_from_env
from connectome_storage.config import ENV_VARIABLES
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
    with pytest.raises(ConfigError, match="known backends: file, redis, sqlite"):
        create_storage_from_env({"CONNECTOME_STORAGE_TYPE": "postgres"})
    with pytest.raises(ConfigError, match="'postgres'"):
        StorageFactory.create_storage("postgres", {})


def test_every_documented_variable_is_known() -> None:
    documented = {
        "CONNECTOME_STORAGE_BASE_DIR", "CONNECTOME_STORAGE_DB_PATH", "CONNECTOME_STORAGE_CREATE_BACKUPS",
        "CONNECTOME_STORAGE_PRETTY_JSON", "CONNECTOME_STORAGE_WAL_MODE", "CONNECTOME_STORAGE_TIMEOUT",
        "CONNECTOME_STORAGE_MAX_BACKUPS", "CONNECTOME_STORAGE_REDIS_URL", "CONNECTOME_STORAGE_KEY_PREFIX",
        "CONNECTOME_STORAGE_CACHE_TTL",
    }  # fmt: skip
    assert documented <= set(ENV_VARIABLES)


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


def test_seed_factory_example_config_is_accepted(tmp_path: Path) -> None:
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
