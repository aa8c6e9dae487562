"""The storage URL value: each kind parsed once (kind, driver, path, proxy address), its
password kept out of every form that may be shown, and the text handed on unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.errors import StorageError
from hpo.store.url import DEFAULT_URL, ENV_VAR, StorageUrl


@pytest.mark.parametrize("text,kind,driver,path", [
    ("sqlite:///hpo.db", "sqlite", None, Path("hpo.db")),
    ("sqlite:////shared/hpo/study.db", "sqlite", None, Path("/shared/hpo/study.db")),
    ("sqlite:///~/hpo.db", "sqlite", None, Path("~/hpo.db").expanduser()),
    ("sqlite://", "sqlite", None, None),
    ("sqlite:///:memory:", "sqlite", None, None),
    ("postgresql+psycopg2://bob@db.internal/hpo", "postgresql", "psycopg2", None),
    ("postgresql://bob@db.internal/hpo", "postgresql", None, None),
    ("mysql+pymysql://bob@db.internal:3306/hpo", "mysql", "pymysql", None),
    ("journal:///shared/hpo/study.log", "journal", None, Path("/shared/hpo/study.log")),
    ("journal://study.log", "journal", None, Path("study.log")),
    ("grpc://db-proxy.internal:13001", "grpc", None, None),
    ("redis://cache/0", "redis", None, None),
])
def test_each_kind_is_parsed_once(text, kind, driver, path):
    url = StorageUrl.parse(text)
    assert (url.kind, url.driver, url.path) == (kind, driver, path)
    assert str(url) == url.text == text
    assert url.is_server == (kind in ("postgresql", "mysql", "grpc"))
    assert url.is_file == (path is not None)


def test_a_password_is_in_no_form_that_is_shown():
    url = StorageUrl.parse("postgresql+psycopg2://bob:s3cr3t-pw@db.internal:5432/hpo")
    assert url.redacted == "postgresql+psycopg2://bob:***@db.internal:5432/hpo"
    assert "s3cr3t-pw" not in repr(url) and "s3cr3t-pw" not in url.redacted
    assert url.redact("driver said: bad password s3cr3t-pw") == "driver said: bad password ***"
    assert str(url) == "postgresql+psycopg2://bob:s3cr3t-pw@db.internal:5432/hpo"  # as given
    assert (url.kind, url.driver, url.host) == ("postgresql", "psycopg2", "db.internal")
    assert StorageUrl.parse("sqlite:///hpo.db").redacted == "sqlite:///hpo.db"


def test_a_proxy_url_has_its_host_and_port():
    url = StorageUrl.parse("grpc://db-proxy.internal:13001")
    assert (url.host, url.port) == ("db-proxy.internal", 13001)
    assert url.address() == ("db-proxy.internal", 13001)
    assert StorageUrl.parse("grpc://db-proxy.internal").address() == ("db-proxy.internal", 13000)


@pytest.mark.parametrize("text,message", [
    ("grpc://bob:s3cr3t-pw@127.0.0.1:13000",
     "grpc://bob:***@127.0.0.1:13000: a grpc:// URL takes no user or password (the proxy holds "
     "the database's credentials); expected grpc://HOST:PORT"),
    ("grpc://127.0.0.1:13000/db",
     "malformed proxy URL grpc://127.0.0.1:13000/db; expected grpc://HOST:PORT, e.g. "
     "grpc://db-proxy.internal:13000"),
    ("grpc://:13000",
     "malformed proxy URL grpc://:13000; expected grpc://HOST:PORT, e.g. "
     "grpc://db-proxy.internal:13000"),
    ("grpc://host:port",
     "malformed proxy URL grpc://host:port: Port could not be cast to integer value as 'port'; "
     "expected grpc://HOST:PORT"),
])
def test_a_bad_proxy_url_parses_and_its_address_is_one_line(text, message):
    url = StorageUrl.parse(text)  # parsing never fails: the opener says what is wrong
    assert url.kind == "grpc" and url.host is None and url.port is None
    with pytest.raises(StorageError) as info:
        url.address()
    assert str(info.value) == message


def test_the_flag_wins_over_the_environment_over_the_default(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert StorageUrl.parse(None).text == DEFAULT_URL
    monkeypatch.setenv(ENV_VAR, "journal:///shared/x.log")
    assert StorageUrl.parse(None).kind == "journal"
    assert StorageUrl.parse("sqlite:///a.db").text == "sqlite:///a.db"


def test_the_value_is_frozen_and_compares_by_its_text():
    url = StorageUrl.parse("sqlite:///hpo.db")
    assert url == StorageUrl.parse("sqlite:///hpo.db") != StorageUrl.parse("sqlite:///b.db")
    with pytest.raises(AttributeError):
        url.text = "sqlite:///b.db"  # type: ignore[misc]
