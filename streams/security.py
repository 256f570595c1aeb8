"""TLS and SASL settings for every Kafka client recstream opens, and what each library wants.

One :class:`SecuritySettings` (part of :class:`streams.config.KafkaSettings`) says how to
reach the cluster: ``PLAINTEXT`` (the default), ``SSL``, ``SASL_PLAINTEXT`` or
``SASL_SSL``; for SASL the mechanism (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``), user
name and password; for TLS the CA file (default: the system's CAs), an optional client
certificate and key, and whether the broker's host name is checked. It is turned into the
arguments of each library by one function per library: :func:`kafka_python_kwargs`
(producers, consumers, admin), :func:`aiokafka_kwargs` and :func:`faust_credentials`
(the worker's Faust app, over aiokafka).

The password is a :class:`Secret`: its ``repr`` and ``str`` are masked, and it is left
out of the settings' ``repr``; only the client arguments hold it in clear.

kafka-python 3.0 reports neither a refused password nor a failed TLS handshake: it sees a
closed connection and retries until its bootstrap timeout. :func:`check_connection`
therefore opens one authenticated connection (with aiokafka, which reads the broker's
answer) and sends one request past the handshakes before recstream's clients start, and
raises :class:`AuthenticationFailed` or :class:`BrokerUnreachable` with a one-line message
that says what failed (a certificate not signed by the CA file, expired, for another host; a
client certificate the broker wants; a listener speaking another protocol) and what to change.

:func:`check_transactional_ids` asks whether the broker's ACLs let the user use the
exactly-once worker's transactional ids, before the worker starts.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

ENV_SECURITY_PROTOCOL = "RECSTREAM_SECURITY_PROTOCOL"
ENV_SASL_MECHANISM = "RECSTREAM_SASL_MECHANISM"
ENV_SASL_USERNAME = "RECSTREAM_SASL_USERNAME"
ENV_SASL_PASSWORD = "RECSTREAM_SASL_PASSWORD"
ENV_SASL_PASSWORD_FILE = "RECSTREAM_SASL_PASSWORD_FILE"
ENV_SSL_CAFILE = "RECSTREAM_SSL_CAFILE"
ENV_SSL_CERTFILE = "RECSTREAM_SSL_CERTFILE"
ENV_SSL_KEYFILE = "RECSTREAM_SSL_KEYFILE"
ENV_SSL_CHECK_HOSTNAME = "RECSTREAM_SSL_CHECK_HOSTNAME"

#: Keys of the config file's ``[kafka]`` table that belong to this module.
FILE_KEYS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "sasl_password_file",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
#: The longest password file read (a password, not a document).
MAX_PASSWORD_FILE_BYTES = 4096


def _config_error(message: str) -> Exception:
    from .config import ConfigError  # config imports this module

    return ConfigError(message)


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or logs; :meth:`reveal` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self):  # never written to a pickle by accident
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """How recstream's clients connect and authenticate; validated on construction."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        protocol = (self.protocol or "PLAINTEXT").strip().upper()
        object.__setattr__(self, "protocol", protocol)
        if isinstance(self.sasl_password, str):
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))
        if self.sasl_mechanism is not None:
            object.__setattr__(self, "sasl_mechanism", self.sasl_mechanism.strip().upper() or None)
        if protocol not in PROTOCOLS:
            raise _config_error(f"security protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.uses_sasl:
            missing = [
                what
                for what, value in (
                    ("--sasl-mechanism", self.sasl_mechanism),
                    ("--sasl-username", self.sasl_username),
                    ("a password (--sasl-password-file or RECSTREAM_SASL_PASSWORD)", self.sasl_password),
                )
                if not value
            ]
            if missing:
                raise _config_error(f"security protocol {protocol} needs {', '.join(missing)}")
            if self.sasl_mechanism not in MECHANISMS:
                raise _config_error(f"SASL mechanism: {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}")
        else:
            given = [
                name
                for name, value in (("SASL mechanism", self.sasl_mechanism), ("SASL username", self.sasl_username), ("SASL password", self.sasl_password))
                if value
            ]
            if given:
                raise _config_error(f"{', '.join(given)} given, but the security protocol is {protocol}: use SASL_PLAINTEXT or SASL_SSL (--security-protocol)")
        if self.uses_ssl:
            for what, path in (("CA file", self.ssl_cafile), ("certificate file", self.ssl_certfile), ("key file", self.ssl_keyfile)):
                if path and not os.path.isfile(path):
                    raise _config_error(f"TLS {what}: {path} does not exist or is not a file")
            if self.ssl_keyfile and not self.ssl_certfile:
                raise _config_error("TLS key file given without a certificate file (--ssl-certfile)")
            self.ssl_context()  # a file that is not PEM fails here, not at the first connection
        else:
            given = [
                name for name, value in (("--ssl-cafile", self.ssl_cafile), ("--ssl-certfile", self.ssl_certfile), ("--ssl-keyfile", self.ssl_keyfile)) if value
            ]
            if given:
                raise _config_error(f"{', '.join(given)} given, but the security protocol is {protocol}: use SSL or SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """For logs and messages: protocol, mechanism and user, never the password."""
        if self.uses_sasl:
            return f"{self.protocol} {self.sasl_mechanism} as {self.sasl_username!r}"
        return self.protocol

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context every client uses (None without TLS): the CA file or the system's
        CAs, the client certificate when given, host name checking unless turned off."""
        if not self.uses_ssl:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise _config_error(
                f"TLS files ({self.ssl_cafile or 'system CAs'}{', ' + self.ssl_certfile if self.ssl_certfile else ''}) cannot be loaded: {exc}"
            ) from None
        context.check_hostname = self.ssl_check_hostname
        return context

    def to_env(self) -> dict[str, str]:
        """The ``RECSTREAM_*`` variables that reproduce these settings in a child process
        (the password travels in the environment, never on a command line)."""
        env = {ENV_SECURITY_PROTOCOL: self.protocol, ENV_SSL_CHECK_HOSTNAME: "true" if self.ssl_check_hostname else "false"}
        for name, value in (
            (ENV_SASL_MECHANISM, self.sasl_mechanism),
            (ENV_SASL_USERNAME, self.sasl_username),
            (ENV_SSL_CAFILE, self.ssl_cafile),
            (ENV_SSL_CERTFILE, self.ssl_certfile),
            (ENV_SSL_KEYFILE, self.ssl_keyfile),
        ):
            env[name] = value or ""
        env[ENV_SASL_PASSWORD] = self.sasl_password.reveal() if self.sasl_password else ""
        env[ENV_SASL_PASSWORD_FILE] = ""  # the password above wins; no stale file from the parent
        return env


# --------------------------------------------------------------------------- from flags, env, file


def _truthy(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _config_error(f"{name}: {value!r} is not true or false")


def read_password_file(path: str) -> Secret:
    """The first line of ``path`` (trailing newline removed) as a :class:`Secret`."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        raise _config_error(f"SASL password file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise _config_error(f"SASL password file {path}: longer than {MAX_PASSWORD_FILE_BYTES} bytes, not a password")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _config_error(f"SASL password file {path}: not UTF-8 text") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise _config_error(f"SASL password file {path}: empty")
    return Secret(password)


def _password(level: str, password: Any, password_file: Any) -> Secret | None:
    if password and password_file:
        raise _config_error(f"{level}: give the SASL password or a password file, not both")
    if password_file:
        return read_password_file(str(password_file))
    if password:
        return Secret(str(password))
    return None


def resolve(
    env: Mapping[str, str],
    file_table: Mapping[str, Any],
    *,
    security_protocol: str | None = None,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password_file: str | None = None,
    ssl_cafile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_check_hostname: bool | None = None,
) -> SecuritySettings:
    """Security settings from flags (the keyword arguments), then ``RECSTREAM_*`` variables,
    then the config file's ``[kafka]`` table, then defaults: the first that gives a value wins."""

    def pick(flag: Any, env_name: str, file_key: str) -> Any:
        if flag not in (None, ""):
            return flag
        if env.get(env_name):
            return env[env_name]
        value = file_table.get(file_key)
        return None if value in (None, "") else value

    password = _password("--sasl-password-file", None, sasl_password_file)
    if password is None:
        password = _password("environment", env.get(ENV_SASL_PASSWORD), env.get(ENV_SASL_PASSWORD_FILE))
    if password is None:
        password = _password("config file", file_table.get("sasl_password"), file_table.get("sasl_password_file"))
    check = pick(ssl_check_hostname, ENV_SSL_CHECK_HOSTNAME, "ssl_check_hostname")
    return SecuritySettings(
        protocol=str(pick(security_protocol, ENV_SECURITY_PROTOCOL, "security_protocol") or "PLAINTEXT"),
        sasl_mechanism=pick(sasl_mechanism, ENV_SASL_MECHANISM, "sasl_mechanism"),
        sasl_username=pick(sasl_username, ENV_SASL_USERNAME, "sasl_username"),
        sasl_password=password,
        ssl_cafile=pick(ssl_cafile, ENV_SSL_CAFILE, "ssl_cafile"),
        ssl_certfile=pick(ssl_certfile, ENV_SSL_CERTFILE, "ssl_certfile"),
        ssl_keyfile=pick(ssl_keyfile, ENV_SSL_KEYFILE, "ssl_keyfile"),
        ssl_check_hostname=True if check is None else _truthy("ssl check hostname", check),
    )


# --------------------------------------------------------------------------- per library


def kafka_python_kwargs(sec: SecuritySettings) -> dict[str, Any]:
    """Arguments of kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
    kwargs: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.uses_sasl:
        assert sec.sasl_password is not None
        kwargs.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username, sasl_plain_password=sec.sasl_password.reveal())
    if sec.uses_ssl:
        kwargs.update(ssl_context=sec.ssl_context(), ssl_check_hostname=sec.ssl_check_hostname)
    return kwargs


def aiokafka_kwargs(sec: SecuritySettings) -> dict[str, Any]:
    """Arguments of aiokafka's clients (which take TLS settings only as an ``ssl_context``)."""
    kwargs: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.uses_sasl:
        assert sec.sasl_password is not None
        kwargs.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username, sasl_plain_password=sec.sasl_password.reveal())
    if sec.uses_ssl:
        kwargs["ssl_context"] = sec.ssl_context()
    return kwargs


def faust_credentials(sec: SecuritySettings):
    """``broker_credentials`` of ``faust.App`` (None for PLAINTEXT). Faust keeps the
    ``kafka://`` broker URL whatever the protocol; the credentials choose it."""
    import faust

    if sec.uses_sasl:
        assert sec.sasl_password is not None
        return faust.SASLCredentials(
            username=sec.sasl_username, password=sec.sasl_password.reveal(), mechanism=sec.sasl_mechanism, ssl_context=sec.ssl_context()
        )
    if sec.uses_ssl:
        return faust.SSLCredentials(sec.ssl_context())
    return None


# --------------------------------------------------------------------------- connection check


class AuthenticationFailed(RuntimeError):
    """The broker refused the credentials (or the mechanism); the message is for the user."""


class BrokerUnreachable(RuntimeError):
    """No bootstrap server could be reached with these settings (down, TLS failure, wrong protocol)."""


_verified: set[tuple] = set()
_verified_lock = threading.Lock()


def _detail(exc: BaseException) -> str:
    """An exception's own words: the broker's message, or the OS error, or its class name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if exc.args and isinstance(exc.args[0], str) and exc.args[0]:
        return exc.args[0]
    return type(exc).__name__


def _auth_message(sec: SecuritySettings, detail: str) -> str:
    return f"authentication failed for user {sec.sasl_username!r} (SASL {sec.sasl_mechanism}): check the username and password (broker: {detail})"


_HANDSHAKE_CA_CODES = {2, 18, 19, 20, 21}  # OpenSSL: the issuer is missing or not trusted
_ALERT_ON_CLIENT_CERT = (
    "BAD_CERTIFICATE",
    "CERTIFICATE_REQUIRED",
    "HANDSHAKE_FAILURE",
    "UNKNOWN_CA",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_REVOKED",
    "ACCESS_DENIED",
)
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNEXPECTED_EOF_WHILE_READING")


def _ssl_words(exc: ssl.SSLError) -> str:
    """OpenSSL's own words for an error (``sslv3 alert bad certificate``), without the
    ``[SSL: ...]`` tag and the source location."""
    text = str(exc)
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(" (_ssl.c:", 1)[0].strip() or (exc.reason or type(exc).__name__)


def _tls_problem(server: str, sec: SecuritySettings, exc: ssl.SSLError) -> str:
    """One clause for a failed TLS handshake: what failed, against which CA file, what to do."""
    cas = f"the CA file {sec.ssl_cafile}" if sec.ssl_cafile else "the system's CAs (no --ssl-cafile given)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = (exc.verify_message or _ssl_words(exc)).rstrip(".")
        code = exc.verify_code
        if code in _HANDSHAKE_CA_CODES:
            hint = f": the broker's certificate is not signed by a CA in {cas}; give the cluster's CA certificate with --ssl-cafile"
        elif code == 10:
            hint = (
                f" (checked against {cas}): the broker's certificate, or its CA's, has expired; the cluster's "
                "operators must renew it (or this machine's clock is wrong)"
            )
        elif code == 9:
            hint = f" (checked against {cas}): the broker's certificate is not valid yet; is this machine's clock right?"
        elif code in (62, 64):
            hint = (
                f" (checked against {cas}, host name checking on): the broker's certificate is not for the host in "
                "--broker; connect with a name or address the certificate holds"
            )
        else:
            hint = f" (checked against {cas})"
        return f"{server}: TLS handshake failed: certificate verify failed ({detail}){hint}"
    reason = (exc.reason or "").upper()
    if "ALERT" in reason and any(word in reason for word in _ALERT_ON_CLIENT_CERT):
        if not sec.ssl_certfile:
            return (
                f"{server}: TLS handshake failed: the broker requires a client certificate (mutual TLS) and none "
                f"was given ({_ssl_words(exc)}): set --ssl-certfile and --ssl-keyfile"
            )
        return (
            f"{server}: TLS handshake failed: the broker refused the client certificate {sec.ssl_certfile} "
            f"({_ssl_words(exc)}): is it signed by a CA the broker trusts, and still valid?"
        )
    if reason in _NOT_TLS:
        return f"{server}: TLS handshake failed ({_ssl_words(exc)}): the listener does not seem to speak TLS (a PLAINTEXT or SASL_PLAINTEXT port?)"
    return f"{server}: TLS handshake failed ({_ssl_words(exc)})"


def _ssl_cause(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind a connection error (aiokafka reports a TLS alert received after
    the handshake, e.g. a refused client certificate, as a closed connection)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


async def _probe(servers: list[str], sec: SecuritySettings, timeout_s: float, tls12: bool = False) -> None:
    """Connect to each of ``servers`` and send one request; raises :class:`BrokerUnreachable`
    or :class:`AuthenticationFailed` with one line that says what to change.

    With TLS 1.3 a broker that wants a client certificate checks it after the handshake
    has completed on the client's side, and its refusal reaches the client either as a TLS
    alert or, depending on timing, as a plain closed connection.  So when an SSL connection
    without a client certificate is closed, the probe asks again with TLS 1.2 at most
    (``tls12``), where the certificate request is part of the handshake and a refusal is
    always a TLS alert."""
    from aiokafka import errors as E
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    problems, closed = [], False
    kwargs = aiokafka_kwargs(sec)
    if tls12:
        kwargs["ssl_context"].maximum_version = ssl.TLSVersion.TLSv1_2
    for server in servers:
        host, _, port = server.rpartition(":")
        conn = None
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), client_id="recstream-check", request_timeout_ms=int(timeout_s * 1000), **kwargs),
                timeout_s,
            )
            # one request past the handshakes, as every client's first: a listener that wants
            # SASL answers ApiVersions to anyone but closes on this
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
        except (E.SaslAuthenticationFailed, E.AuthenticationFailedError) as exc:
            raise AuthenticationFailed(_auth_message(sec, _detail(exc))) from None
        except E.UnsupportedSaslMechanismError:
            raise AuthenticationFailed(
                f"the broker at {server} does not accept SASL mechanism {sec.sasl_mechanism} (user {sec.sasl_username!r}): choose another with --sasl-mechanism"
            ) from None
        except E.IllegalSaslStateError:
            problems.append(
                f"{server}: the listener does not take SASL (IllegalSaslStateError): use {'SSL' if sec.uses_ssl else 'PLAINTEXT'}, or the cluster's SASL port"
            )
        except ssl.SSLError as exc:
            problems.append(_tls_problem(server, sec, exc))
        except (asyncio.TimeoutError, TimeoutError):
            problems.append(f"{server}: no answer within {timeout_s:.0f}s")
        except (ConnectionResetError, E.KafkaConnectionError) as exc:
            cause = _ssl_cause(exc)
            if cause is not None and sec.uses_ssl:
                problems.append(_tls_problem(server, sec, cause))
            elif isinstance(exc, ConnectionResetError) or "closed" in str(exc):
                closed = True
                problems.append(f"{server}: the broker closed the connection")
            else:
                problems.append(f"{server}: {_detail(exc)}")
        except (OSError, E.KafkaError) as exc:
            problems.append(f"{server}: {_detail(exc)}")
        else:
            return
        finally:
            if conn is not None:
                conn.close()
    if closed and sec.uses_ssl and not sec.ssl_certfile and not tls12:
        try:
            await _probe(servers, sec, timeout_s, tls12=True)
        except BrokerUnreachable as again:
            if "client certificate" in str(again):
                raise
        else:
            return
    hint = ""
    if closed:
        hint = " (does the listener speak this protocol? TLS against a plain listener, SASL against one without SASL, or the reverse, are closed like this)"
    raise BrokerUnreachable(f"cannot connect to Kafka with {sec.describe()}: {'; '.join(problems)}{hint}")


def _in_thread(run_coro, timeout_s: float, what: str, sec: SecuritySettings) -> None:
    """Run ``run_coro()`` in a fresh event loop on its own thread (callers may be inside one);
    its exception, if any, is raised here."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(run_coro())
        except BaseException as exc:  # handed to the calling thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name=f"recstream-kafka-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise BrokerUnreachable(f"cannot connect to Kafka with {sec.describe()}: no answer within {timeout_s:.0f}s")
    if outcome:
        raise outcome[0]


TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
COORDINATOR_TYPE_TRANSACTION = 1


async def _find_transaction_coordinator(servers: list[str], sec: SecuritySettings, transactional_id: str, timeout_s: float) -> None:
    from aiokafka import errors as E
    from aiokafka.conn import create_conn
    from aiokafka.protocol.coordination import FindCoordinatorRequest

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), client_id="recstream-check", request_timeout_ms=int(timeout_s * 1000), **aiokafka_kwargs(sec)), timeout_s
            )
        except (OSError, E.KafkaError, ssl.SSLError, asyncio.TimeoutError):
            continue  # check_connection reports an unreachable broker; this checks ACLs only
        try:
            while True:
                response = await asyncio.wait_for(conn.send(FindCoordinatorRequest(transactional_id, COORDINATOR_TYPE_TRANSACTION)), timeout_s)
                if response.error_code == TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                    from kafka.errors import TransactionalIdAuthorizationFailedError

                    raise TransactionalIdAuthorizationFailedError(
                        f"transactional id {transactional_id!r}: --processing-guarantee exactly_once needs Write and "
                        "Describe on the transactional ids that start with the app id"
                    )
                if response.error_code == 0 or loop.time() > deadline:
                    return  # found, or the broker is still making its transaction log: not an ACL matter
                await asyncio.sleep(0.2)  # the coordinator is not available yet: ask again
        except (OSError, E.KafkaError, asyncio.TimeoutError):
            continue
        finally:
            conn.close()


def check_transactional_ids(servers: list[str], sec: SecuritySettings, transactional_id: str, *, timeout_s: float = 15.0) -> None:
    """Raise ``kafka.errors.TransactionalIdAuthorizationFailedError`` (an ``AuthorizationError``:
    ``recstream: not authorized: the user may not use these transactional ids ...``) when the
    broker's ACLs refuse ``transactional_id`` to this user.

    For ``--processing-guarantee exactly_once``, before the worker starts: its transactional
    producers start in the middle of a rebalance, where aiokafka logs an ACL refusal and
    carries on, and the worker would wait forever. It asks for the transaction coordinator
    of the id (``FindCoordinator``, which needs Describe on it), which neither creates nor
    fences a producer. Reaching the broker at all is :func:`check_connection`'s business:
    this one returns quietly when it cannot connect.
    """
    _in_thread(lambda: _find_transaction_coordinator(list(servers), sec, transactional_id, timeout_s), timeout_s * (len(servers) + 1) + 5, "txn-check", sec)


def check_connection(servers: list[str], sec: SecuritySettings, *, timeout_s: float = 15.0, cache: bool = True) -> None:
    """Open (and close) one authenticated connection to the first bootstrap server that
    answers; raise :class:`AuthenticationFailed` or :class:`BrokerUnreachable` otherwise.

    Runs for TLS and SASL settings only (PLAINTEXT clients report their own errors); a
    success is remembered for the process. Safe to call from inside an event loop (the
    check runs on its own thread).
    """
    if sec.protocol == "PLAINTEXT":
        return
    key = (tuple(servers), sec)
    if cache and key in _verified:
        return
    _in_thread(lambda: _probe(list(servers), sec, timeout_s), timeout_s * len(servers) + 5, "check", sec)
    with _verified_lock:
        _verified.add(key)
