"""TLS against a real HTTPS server on 127.0.0.1 (our local KoboToolbox-compatible server
behind a self-signed certificate made here): the client verifies certificates by default,
says so clearly when one fails, and talks to the server only when told to trust it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kobo.client import KoboClient
from kobo.errors import KoboError
from kobo.seed import SeededServer, seeded_server


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, as on a field server set up by hand."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "terrain test server")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def https_server(household, tmp_path: Path) -> Iterator[tuple[SeededServer, str, Path]]:
    """A seeded server whose listening socket speaks TLS; yields it, its https:// URL and
    the certificate file."""
    cert_path, key_path = self_signed(tmp_path)
    seeded = seeded_server([household], 5, seed=81)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    httpd = seeded.server._httpd
    # The handshake happens in each request's thread, not in the accepting one.
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    httpd.handle_error = lambda request, address: None  # a refused handshake is the test's point, not noise
    with seeded.server:
        yield seeded, seeded.server.url.replace("http://", "https://", 1), cert_path


def test_a_self_signed_certificate_is_refused_by_default_with_a_clear_error(https_server, tmp_path: Path) -> None:
    seeded, url, _ = https_server
    uid = seeded.assets["household_survey"].uid
    started = time.monotonic()
    with KoboClient(url, seeded.token, backoff=0.5) as client:
        with pytest.raises(KoboError) as caught:
            client.get_asset(uid)
    error = caught.value
    message = str(error)
    assert "TLS certificate" in message and "127.0.0.1" in message
    assert "self-signed" in message  # the reason OpenSSL gave
    assert "REQUESTS_CA_BUNDLE" in message  # what to do about it
    assert not error.transient  # a certificate does not get better by asking again...
    assert time.monotonic() - started < 0.5  # ...so it is not retried
    assert error.__cause__ is None and error.__suppress_context__  # one clear error, not requests' chain
    assert seeded.token not in message + repr(error)
    with KoboClient(url, seeded.token, backoff=0.5) as client:  # attachments: the same error
        with pytest.raises(KoboError, match="TLS certificate of 127.0.0.1") as download:
            client.download(f"{url}/media/original?media_file=photo.jpg", tmp_path / "photo.jpg")
    assert not download.value.transient
    assert time.monotonic() - started < 1
    assert seeded.server.requests_served == 0  # no request (and so no token) went over the refused connection


def test_the_certificate_authority_named_in_the_error_is_trusted(https_server, monkeypatch) -> None:
    seeded, url, cert_path = https_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))
    with KoboClient(url, seeded.token) as client:
        assert client.get_asset(seeded.assets["household_survey"].uid)["uid"] == seeded.assets["household_survey"].uid


def test_verify_tls_off_talks_to_the_server_and_warns(https_server, caplog: pytest.LogCaptureFixture) -> None:
    seeded, url, _ = https_server
    uid = seeded.assets["household_survey"].uid
    caplog.set_level(logging.WARNING, logger="kobo.client")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with KoboClient(url, seeded.token, verify_tls=False) as client:
            pages = list(client.iter_pages(uid))
    assert sum(len(page.results) for page in pages) == 5
    assert seeded.server.requests_served >= 1
    off = [r for r in caplog.records if r.levelno == logging.WARNING and "TLS certificate verification is OFF" in r.getMessage()]
    assert len(off) == 1 and url in off[0].getMessage()
    assert seeded.token not in caplog.text
    assert any("Unverified HTTPS request" in str(w.message) for w in caught)  # urllib3's, on each request


def test_verify_tls_is_a_setting_of_terrain_toml_and_the_environment(https_server, tmp_path: Path, monkeypatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A data manager turns verification off in terrain.toml (or TERRAIN_VERIFY_TLS); the
    flows' client then talks to the server, with the warning; left alone, it refuses."""
    from flows.pipeline import _client
    from flows.settings import load_settings

    seeded, url, _ = https_server
    uid = seeded.assets["household_survey"].uid
    config = tmp_path / "terrain.toml"
    config.write_text(f'kobo_url = "{url}"\nverify_tls = false\n', encoding="utf-8")
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    off = load_settings(config, environ={})
    assert off.verify_tls is False
    assert load_settings(empty, environ={"TERRAIN_VERIFY_TLS": "no"}).verify_tls is False
    default = load_settings(empty, environ={"TERRAIN_KOBO_URL": url})
    assert default.verify_tls is True
    caplog.set_level(logging.WARNING, logger="kobo.client")
    # Importing the flows loads Prefect's logging configuration; listen on the client's logger itself.
    logging.getLogger("kobo.client").addHandler(caplog.handler)
    monkeypatch.setenv("KOBO_TOKEN", seeded.token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _client(off) as client:
            assert sum(len(page.results) for page in client.iter_pages(uid)) == 5
        with pytest.raises(KoboError, match="certificate"), _client(default) as client:
            list(client.iter_pages(uid))
    logging.getLogger("kobo.client").removeHandler(caplog.handler)
    assert any("TLS certificate verification is OFF" in r.getMessage() for r in caplog.records)
