"""TLS/SASL settings: validation, precedence (flags > env > config file > defaults), the
arguments each Kafka library gets, and that the password never shows."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from recstream.streams import security as S
from recstream.streams.config import ConfigError, KafkaSettings
from recstream.streams.security import Secret, SecuritySettings

PASSWORD = "pa55-w0rd-Zq9"
SASL_ENV = {
    "RECSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "RECSTREAM_SASL_MECHANISM": "SCRAM-SHA-256",
    "RECSTREAM_SASL_USERNAME": "alice",
    "RECSTREAM_SASL_PASSWORD": PASSWORD,
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> Path:
    """A self-signed CA certificate (PEM), made with openssl."""
    folder = tmp_path_factory.mktemp("ca")
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=recstream-test-ca",
                "-keyout",
                str(folder / "ca.key"),
                "-out",
                str(folder / "ca.pem"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl is needed to make a test CA: {exc}")
    return folder / "ca.pem"


def sasl(**kw) -> SecuritySettings:
    base = dict(protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="alice", sasl_password=PASSWORD)
    return SecuritySettings(**{**base, **kw})


# --------------------------------------------------------------------------- the password never shows


def test_a_secret_never_shows_itself():
    s = Secret(PASSWORD)
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", "%s" % s, "{}".format(s)):
        assert PASSWORD not in shown
    assert s.reveal() == PASSWORD and s == Secret(PASSWORD) and s != Secret("other") and bool(s)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)


def test_settings_repr_and_str_never_contain_the_password():
    settings = KafkaSettings.from_env(SASL_ENV)
    assert settings.security.sasl_password.reveal() == PASSWORD
    for shown in (repr(settings), str(settings), repr(settings.security), str(settings.security), settings.security.describe()):
        assert PASSWORD not in shown
    assert "alice" in repr(settings) and "SCRAM-SHA-256" in repr(settings)
    assert settings.security.describe() == "SASL_PLAINTEXT SCRAM-SHA-256 as 'alice'"


def test_help_of_every_command_never_contains_the_password(monkeypatch):
    from recstream.streams.cli import build_parser

    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    texts = [parser.format_help()] + [p.format_help() for p in sub.choices.values()]
    assert all(PASSWORD not in t for t in texts)
    worker_help = sub.choices["worker"].format_help()
    assert "--sasl-password-file" in worker_help and "--security-protocol" in worker_help and "--config" in worker_help
    assert "--sasl-password " not in worker_help  # no flag: command lines are visible to every user


def test_the_worker_startup_log_never_contains_the_password(monkeypatch, tmp_path, caplog):
    import faust

    from recstream.streams import worker as W
    from recstream.streams.cli import build_parser, worker_config

    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    config = worker_config(build_parser().parse_args(["worker", "--data-dir", str(tmp_path)]))
    if hasattr(config, "metrics_port"):
        config = dataclasses.replace(config, metrics_port=0)
    checked = []
    monkeypatch.setattr(S, "check_connection", lambda servers, sec, **kw: checked.append((servers, sec)))

    class FakePipeline:  # no model, no Kafka: run_worker's own log lines are what is checked
        def __init__(self, cfg):
            self.app, self.device = object(), "cpu"
            self.encoder = type("E", (), {"name": "fake-encoder"})()
            self.transactions, self.uncommitted_writes = None, False  # at-least-once
            self.stream_time = None
            self.engine = type("Engine", (), {"describe_ranker": lambda self: "blend/zscore(text=0.4, co=0.5, pop=0.1)"})()

        def create_topics(self) -> bool:
            return True

    class FakeWorker:
        def __init__(self, *args, **kwargs):
            pass

        def on_setup_root_logger(self, logger, level):
            pass

        def execute_from_commandline(self):
            logging.getLogger("recstream.worker").info("fake worker ran")

    monkeypatch.setattr(W, "Pipeline", FakePipeline)
    monkeypatch.setattr(W, "install_consumer_fixes", lambda app, transactions=None, merger=None: None)  # the fake app has no consumer
    monkeypatch.setattr(faust, "Worker", FakeWorker)
    with caplog.at_level(logging.DEBUG):
        assert W.run_worker(config) == 0
    assert checked and checked[0][1].sasl_username == "alice"
    assert "SASL_PLAINTEXT SCRAM-SHA-256 as 'alice'" in caplog.text and "fake worker ran" in caplog.text
    assert PASSWORD not in caplog.text


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(protocol="SASL_SSLX"), "security protocol: 'SASL_SSLX' is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        (dict(sasl_mechanism=None), "security protocol SASL_PLAINTEXT needs --sasl-mechanism"),
        (dict(sasl_username=None), "needs --sasl-username"),
        (dict(sasl_password=None), "needs a password (--sasl-password-file or RECSTREAM_SASL_PASSWORD)"),
        (dict(sasl_password=""), "needs a password"),
        (dict(sasl_mechanism="GSSAPI"), "SASL mechanism: 'GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        (dict(protocol="PLAINTEXT"), "SASL mechanism, SASL username, SASL password given, but the security protocol is PLAINTEXT"),
        (dict(ssl_cafile="/nonexistent/ca.pem"), "--ssl-cafile given, but the security protocol is SASL_PLAINTEXT"),
        (dict(protocol="SASL_SSL", ssl_cafile="/nonexistent/ca.pem"), "TLS CA file: /nonexistent/ca.pem does not exist or is not a file"),
    ],
)
def test_unusable_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ConfigError) as err:
        sasl(**kwargs)
    assert message in str(err.value)
    assert PASSWORD not in str(err.value)


def test_mechanism_and_protocol_are_case_insensitive():
    s = sasl(protocol="sasl_plaintext", sasl_mechanism="scram-sha-512")
    assert (s.protocol, s.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert SecuritySettings().protocol == "PLAINTEXT" and not SecuritySettings().uses_sasl


def test_tls_files_are_checked_when_the_settings_are_made(tmp_path, ca_file):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="TLS files .* cannot be loaded"):
        SecuritySettings(protocol="SSL", ssl_cafile=str(not_pem))
    with pytest.raises(ConfigError, match="key file given without a certificate file"):
        SecuritySettings(protocol="SSL", ssl_cafile=str(ca_file), ssl_keyfile=str(ca_file))
    s = SecuritySettings(protocol="SSL", ssl_cafile=str(ca_file), ssl_check_hostname=False)
    context = s.ssl_context()
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert any(c["subject"] == ((("commonName", "recstream-test-ca"),),) for c in context.get_ca_certs())


# --------------------------------------------------------------------------- flags > env > file > defaults


def test_flags_win_over_env_which_wins_over_the_config_file(tmp_path):
    config = tmp_path / "recstream.toml"
    config.write_text(
        '[kafka]\nbroker = "file-host:9096"\ntopic_prefix = "file."\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        'sasl_mechanism = "PLAIN"\nsasl_username = "from-file"\nsasl_password = "file-password"\n'
    )
    config.chmod(0o600)
    only_file = KafkaSettings.from_env({}, config_file=str(config))
    assert only_file.broker == "file-host:9096" and only_file.topic_prefix == "file." and only_file.app_id == "file.recstream"
    assert only_file.security == SecuritySettings("SASL_PLAINTEXT", "PLAIN", "from-file", "file-password")

    env = {
        "RECSTREAM_CONFIG": str(config),
        "RECSTREAM_BROKER": "env-host:9092",
        "RECSTREAM_SASL_USERNAME": "from-env",
        "RECSTREAM_SASL_PASSWORD": "env-password",
    }
    from_env = KafkaSettings.from_env(env)
    assert from_env.broker == "env-host:9092" and from_env.topic_prefix == "file."
    assert (from_env.security.sasl_mechanism, from_env.security.sasl_username) == ("PLAIN", "from-env")
    assert from_env.security.sasl_password.reveal() == "env-password"

    password_file = tmp_path / "password"
    password_file.write_text("flag-password\nignored second line\n")
    flags = KafkaSettings.from_env(env, broker="flag-host:1", sasl_username="from-flag", sasl_mechanism="SCRAM-SHA-512", sasl_password_file=str(password_file))
    assert flags.broker == "flag-host:1"
    assert flags.security == SecuritySettings("SASL_PLAINTEXT", "SCRAM-SHA-512", "from-flag", "flag-password")


def test_defaults_are_plaintext_without_credentials():
    assert KafkaSettings.from_env({}).security == SecuritySettings()


def test_password_sources_are_exclusive_at_one_level_and_files_are_checked(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    with pytest.raises(ConfigError, match="environment: give the SASL password or a password file, not both"):
        KafkaSettings.from_env({**SASL_ENV, "RECSTREAM_SASL_PASSWORD_FILE": str(pw)})
    env = {k: v for k, v in SASL_ENV.items() if k != "RECSTREAM_SASL_PASSWORD"}
    assert KafkaSettings.from_env({**env, "RECSTREAM_SASL_PASSWORD_FILE": str(pw)}).security.sasl_password.reveal() == PASSWORD
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        KafkaSettings.from_env(env, sasl_password_file=str(empty))
    with pytest.raises(ConfigError, match="SASL password file /nonexistent/pw"):
        KafkaSettings.from_env(env, sasl_password_file="/nonexistent/pw")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (S.MAX_PASSWORD_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="not a password"):
        KafkaSettings.from_env(env, sasl_password_file=str(big))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[kafka]\nbroker = \n", "not valid TOML"),
        ("[kafka]\nsasl_pasword = 'typo'\n", "unknown key(s) sasl_pasword in [kafka]"),
        ("[other]\nx = 1\n", "unknown table or key other"),
        ("kafka = 3\n", "'kafka' must be a table"),
        ("[kafka]\nssl_check_hostname = 'no'\n", "ssl_check_hostname must be true or false"),
        ("[kafka]\nbroker = 9092\n", "broker must be a string"),
    ],
)
def test_a_bad_config_file_is_refused_with_a_clear_message(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        KafkaSettings.from_env({}, config_file=str(config))
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="config file /nonexistent.toml"):
        KafkaSettings.from_env({"RECSTREAM_CONFIG": "/nonexistent.toml"})


def test_a_config_file_others_can_read_with_a_password_is_warned_about(tmp_path, caplog):
    config = tmp_path / "open.toml"
    config.write_text(f'[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"\nsasl_password = "{PASSWORD}"\n')
    config.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        KafkaSettings.from_env({}, config_file=str(config))
    assert "other users can read it" in caplog.text and PASSWORD not in caplog.text


def test_with_prefix_keeps_the_connection_and_credentials():
    settings = KafkaSettings.from_env(SASL_ENV, topic_prefix="live.", broker="h:1")
    replay = settings.with_prefix("live.replay-1.")
    assert replay.security == settings.security and replay.broker == "h:1"
    assert (replay.topic_prefix, replay.app_id) == ("live.replay-1.", "live.replay-1.recstream")


def test_the_environment_for_a_child_process_reproduces_the_settings(ca_file):
    for sec in (sasl(), SecuritySettings(), SecuritySettings("SASL_SSL", "PLAIN", "u", PASSWORD, ssl_cafile=str(ca_file), ssl_check_hostname=False)):
        assert S.resolve(sec.to_env(), {}) == sec


# --------------------------------------------------------------------------- per library


def test_kafka_python_arguments_are_ones_every_client_accepts(ca_file):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    plain = S.kafka_python_kwargs(SecuritySettings())
    assert plain == {"security_protocol": "PLAINTEXT"}
    scram = S.kafka_python_kwargs(sasl())
    assert scram == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD}
    tls = S.kafka_python_kwargs(sasl(protocol="SASL_SSL", ssl_cafile=str(ca_file)))
    assert tls["security_protocol"] == "SASL_SSL" and isinstance(tls["ssl_context"], ssl.SSLContext)
    assert tls["ssl_check_hostname"] is True
    for cls in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(tls) <= set(cls.DEFAULT_CONFIG), cls


def test_aiokafka_arguments_are_ones_its_clients_accept(ca_file):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    tls = S.aiokafka_kwargs(sasl(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", ssl_cafile=str(ca_file)))
    assert tls["security_protocol"] == "SASL_SSL" and tls["sasl_mechanism"] == "SCRAM-SHA-512"
    assert tls["sasl_plain_password"] == PASSWORD and isinstance(tls["ssl_context"], ssl.SSLContext)
    for cls in (AIOKafkaProducer, AIOKafkaConsumer):
        assert set(tls) <= set(inspect.signature(cls.__init__).parameters), cls


@pytest.mark.parametrize("kind", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_credentials_give_aiokafka_the_same_arguments(kind, ca_file):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sec = {
        "PLAINTEXT": SecuritySettings(),
        "SSL": SecuritySettings("SSL", ssl_cafile=str(ca_file)),
        "SASL_PLAINTEXT": sasl(),
        "SASL_SSL": sasl(protocol="SASL_SSL", ssl_cafile=str(ca_file)),
    }[kind]
    faust_side = dict(credentials_to_aiokafka_auth(S.faust_credentials(sec)))
    ours = S.aiokafka_kwargs(sec)
    assert faust_side.pop("security_protocol") == ours.pop("security_protocol") == kind
    assert isinstance(faust_side.pop("ssl_context", None), ssl.SSLContext) == isinstance(ours.pop("ssl_context", None), ssl.SSLContext)
    assert faust_side == ours
    assert PASSWORD not in repr(S.faust_credentials(sec))


def test_the_connection_check_skips_plaintext_and_reports_an_unreachable_broker_in_one_line():
    S.check_connection(["127.0.0.1:1"], SecuritySettings())  # PLAINTEXT: the clients report their own errors
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(S.BrokerUnreachable) as err:
        S.check_connection([f"127.0.0.1:{port}"], sasl(), timeout_s=5)
    message = str(err.value)
    assert message.startswith(f"cannot connect to Kafka with SASL_PLAINTEXT SCRAM-SHA-256 as 'alice': 127.0.0.1:{port}: ")
    assert "\n" not in message and PASSWORD not in message


# --------------------------------------------------------------------------- TLS failures, one line each
#
# Real TLS handshakes against a local TLS server (Python's ssl module) with the certificates
# deploy/kafka/kafka.sh makes: each failure happens in the handshake, before any Kafka request,
# so no broker is needed to check how it is reported (tests/integration/test_tls.py checks the
# same cases against the TLS broker, through the CLI).


@pytest.fixture(scope="module")
def tls_certs(tmp_path_factory) -> Path:
    """The TLS broker's certificates (CA, broker, client, expired, wrong host), made by the script."""
    import os
    import shutil

    from recstream.streams.localkafka import script_path

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the certificates")
    data = tmp_path_factory.mktemp("tls-broker")
    env = {**os.environ, "RECSTREAM_KAFKA_TLS_DATA": str(data), "RECSTREAM_KAFKA_TLS_BAD_CERTS": "1"}
    made = subprocess.run(["bash", str(script_path()), "certs", "--tls"], env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return data / "tls"


class _TlsServer:
    """Accepts TLS connections on 127.0.0.1 with ``cert`` (and, with ``client_ca``, requires a
    client certificate signed by it), or answers plain bytes when ``cert`` is None."""

    def __init__(self, cert: Path | None, key: Path | None, client_ca: Path | None = None) -> None:
        import threading

        self.context = None
        if cert is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(str(cert), str(key))
            if client_ca is not None:
                self.context.verify_mode = ssl.CERT_REQUIRED
                self.context.load_verify_locations(str(client_ca))
        self.closed = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():  # as a broker, every connection (a client may try again)
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if self.context is None:
                        conn.recv(1024)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        continue
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1024)
                except (OSError, ssl.SSLError):
                    pass  # the handshake failed: what the client reports is checked

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        self.thread.join(10)


def _failure(server: _TlsServer, sec: SecuritySettings) -> str:
    try:
        with pytest.raises(S.BrokerUnreachable) as err:
            S.check_connection([f"127.0.0.1:{server.port}"], sec, timeout_s=5, cache=False)
    finally:
        server.close()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot connect to Kafka with SSL: 127.0.0.1:{server.port}: TLS handshake failed")
    return message


def test_a_broker_certificate_from_another_ca_names_the_ca_file(tls_certs, ca_file):
    message = _failure(_TlsServer(tls_certs / "broker.pem", tls_certs / "broker.key"), SecuritySettings("SSL", ssl_cafile=str(ca_file)))
    assert "certificate verify failed (" in message
    assert f"the broker's certificate is not signed by a CA in the CA file {ca_file}; give the cluster's CA certificate" in message


def test_an_expired_broker_certificate_says_so(tls_certs):
    ca = tls_certs / "ca.pem"
    message = _failure(_TlsServer(tls_certs / "expired.pem", tls_certs / "expired.key"), SecuritySettings("SSL", ssl_cafile=str(ca)))
    assert f"certificate verify failed (certificate has expired) (checked against the CA file {ca})" in message


def test_a_certificate_for_another_host_says_so_and_passes_without_host_name_checking(tls_certs):
    ca = str(tls_certs / "ca.pem")
    message = _failure(_TlsServer(tls_certs / "wronghost.pem", tls_certs / "wronghost.key"), SecuritySettings("SSL", ssl_cafile=ca))
    assert "certificate verify failed (IP address mismatch, certificate is not valid for '127.0.0.1')" in message
    assert "host name checking on): the broker's certificate is not for the host in --broker" in message
    server = _TlsServer(tls_certs / "wronghost.pem", tls_certs / "wronghost.key")
    try:  # the same certificate passes the handshake without the host name check (then no Kafka answers)
        with pytest.raises(S.BrokerUnreachable) as err:
            S.check_connection([f"127.0.0.1:{server.port}"], SecuritySettings("SSL", ssl_cafile=ca, ssl_check_hostname=False), timeout_s=5, cache=False)
        assert "TLS handshake failed" not in str(err.value)
    finally:
        server.close()


def test_mutual_tls_without_a_client_certificate_asks_for_one(tls_certs):
    ca = tls_certs / "ca.pem"
    server = _TlsServer(tls_certs / "broker.pem", tls_certs / "broker.key", client_ca=ca)
    message = _failure(server, SecuritySettings("SSL", ssl_cafile=str(ca)))
    assert "the broker requires a client certificate (mutual TLS) and none was given" in message
    assert message.endswith("set --ssl-certfile and --ssl-keyfile")


def test_tls_against_a_listener_without_tls_says_so(tls_certs):
    message = _failure(_TlsServer(None, None), SecuritySettings("SSL", ssl_cafile=str(tls_certs / "ca.pem")))
    assert "the listener does not seem to speak TLS" in message


def test_the_transactional_id_check_leaves_an_unreachable_broker_to_the_connection_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    assert S.check_transactional_ids([f"127.0.0.1:{port}"], sasl(), "app-events-0", timeout_s=3) is None
