"""Who can reach the broker and the database: decided from their URLs alone, at start-up.

A service on this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``) or behind a local
socket is reached by nobody else, so any URL will do. Anything else is across a network: the
broker needs TLS (``rediss://``, ``amqps://``) and a password (or an ACL user and its password);
the database needs TLS (``sslmode`` require, verify-ca or verify-full), judged on the server libpq
will really reach (``hostaddr`` over ``host``, and ``PGHOST``/``PGHOSTADDR``/``PGSERVICE`` where
the URL leaves them out). Only the URL and those variables are read: no name is looked up, no
service file is read and nothing is connected to, so a name that happens to resolve to
127.0.0.1 still counts as remote, and a refusal costs nothing. The ``allow_insecure`` settings
waive the rule on a network the operator trusts.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: broker transports that never leave the machine (memory, files, a Unix socket)
LOCAL_BROKER_SCHEMES = frozenset({"memory", "filesystem", "redis+socket", "socket"})
TLS_BROKER_SCHEMES = frozenset({"rediss", "amqps"})
NETWORK_BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp"})
#: libpq sslmodes that always encrypt
TLS_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})
#: certificate checks switched off in a broker URL's query (``ssl_cert_reqs=none``)
_NO_CERT_CHECK = frozenset({"none", "cert_none"})

BROKER_KEY = "broker_url (SYNTHPIPE_BROKER_URL)"
BROKER_WAIVER = "celery.allow_insecure_broker (SYNTHPIPE_CELERY__ALLOW_INSECURE_BROKER=true)"
DATABASE_KEY = "database_url (SYNTHPIPE_DATABASE_URL)"
DATABASE_WAIVER = "database.allow_insecure (SYNTHPIPE_DATABASE__ALLOW_INSECURE=true)"


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (as written in a URL) names this machine's loopback, without a lookup.

    An empty host is the client's default, the loopback. ``localhost`` is the only name
    trusted; addresses must be in 127.0.0.0/8 or be ``::1`` (IPv4-mapped forms included).
    """
    if not host:
        return True
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False  # a name: only a lookup could tell, and none is made
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostport}").geturl()


def _broker_parts(url: str) -> list[str]:
    """Celery takes several broker URLs separated by ``;`` (failover); each is checked."""
    return [u.strip() for u in url.split(";") if u.strip()]


def broker_problem(url: str) -> str | None:
    """Why ``url`` is not a safe broker for other machines to share, or None when it is."""
    for one in _broker_parts(url):
        parts = urlsplit(one)
        scheme = parts.scheme.lower()
        if scheme in LOCAL_BROKER_SCHEMES:
            continue
        try:
            host = parts.hostname
        except ValueError:
            return f"{BROKER_KEY}: cannot read the host of {redact(one)!r}"
        if scheme in NETWORK_BROKER_SCHEMES and is_loopback_host(host):
            continue
        where = f"{redact(one)} is not on this machine"
        fix = (f"use rediss://[USER]:PASSWORD@{host}:PORT/0 with celery.broker_ca_file "
               f"(SYNTHPIPE_CELERY__BROKER_CA_FILE) for a self-signed certificate, or set {BROKER_WAIVER} "
               "on a network you trust")
        if scheme not in NETWORK_BROKER_SCHEMES:
            return f"{BROKER_KEY}: {where} and its transport {scheme!r} cannot be checked for TLS; {fix}"
        if scheme not in TLS_BROKER_SCHEMES:
            return f"{BROKER_KEY}: {where} and is not TLS ({scheme}://); {fix}"
        if not parts.password:
            return f"{BROKER_KEY}: {where} and has no password; {fix}"
        reqs = {v.lower() for v in parse_qs(parts.query).get("ssl_cert_reqs", [])}
        if reqs & _NO_CERT_CHECK:
            return f"{BROKER_KEY}: {where} and its ssl_cert_reqs turns certificate checks off; {fix}"
    return None


def broker_uses_tls(url: str) -> bool:
    return any(urlsplit(u).scheme.lower() in TLS_BROKER_SCHEMES for u in _broker_parts(url))


def broker_ssl_options(url: str, ca_file: Path | None) -> dict[str, Any] | bool:
    """Celery's ``broker_use_ssl`` for ``url``: certificates always checked, against ``ca_file``
    when one is set (a self-signed authority) and the system's authorities otherwise."""
    if not broker_uses_tls(url):
        return False
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if ca_file is not None:
        options["ssl_ca_certs"] = str(ca_file)
    return options


#: libpq variables read for a keyword the connection string leaves out (the ones that choose the server)
PG_ENV_HOST, PG_ENV_HOSTADDR, PG_ENV_SERVICE = "PGHOST", "PGHOSTADDR", "PGSERVICE"
#: sslmodes that, with a service file we do not read, still make the connection safe (the server is verified)
VERIFYING_SSLMODES = frozenset({"verify-ca", "verify-full"})


def _query_values(query: Mapping[str, Any], key: str) -> list[str]:
    """Every value of ``key`` in a URL's query, libpq's comma-separated lists split."""
    raw = query.get(key, ())
    values = [raw] if isinstance(raw, str) else list(raw)
    return [part.strip() for v in values for part in str(v).split(",")]


def database_servers(url: str, env: Mapping[str, str] | None = None) -> tuple[list[str], str | None]:
    """Where libpq will connect for the PostgreSQL ``url``: the hosts or addresses it will really
    use, and the service it will read (None when none), decided as libpq decides, without a lookup.

    ``hostaddr`` (query, else ``PGHOSTADDR``) wins over ``host``: libpq connects to the address and
    uses the name only for certificates and passwords. ``host`` comes from the URL (its host part or
    ``?host=``), else ``PGHOST``. ``service`` comes from the query, else ``PGSERVICE``. An empty
    entry is libpq's default, a local socket.
    """
    from sqlalchemy.engine import make_url

    env = os.environ if env is None else env
    parsed = make_url(url)
    hosts = _split(parsed.host or "") + _query_values(parsed.query, "host")
    if not any(hosts):
        hosts = _split(env.get(PG_ENV_HOST, ""))
    # a keyword the URL names (even empty) is never read from the environment
    addresses = _query_values(parsed.query, "hostaddr") if "hostaddr" in parsed.query \
        else _split(env.get(PG_ENV_HOSTADDR, ""))
    # each host's address, where one is given, is where libpq goes; a host without one is looked up
    servers = [a for a in addresses if a] + [h for i, h in enumerate(hosts) if not (i < len(addresses) and addresses[i])]
    services = _query_values(parsed.query, "service") if "service" in parsed.query \
        else _split(env.get(PG_ENV_SERVICE, ""))
    return servers, next((s for s in services if s), None)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")] if value else []


def database_problem(url: str, sslmode: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """Why ``url`` is not a safe database for other machines to share, or None when it is.

    ``sslmode`` is the settings' value; one in the URL's query takes precedence. The rule is
    applied to the server libpq will really reach (:func:`database_servers`), so ``?hostaddr=``,
    ``PGHOSTADDR`` and ``PGHOST`` cannot route around it; a service (``?service=``, ``PGSERVICE``)
    is a file we do not read, so it counts as another machine unless the server's certificate
    is verified (sslmode verify-ca or verify-full). ``env`` defaults to this process's environment.
    """
    if url.startswith("sqlite"):
        return None  # a file on this machine (and no SQLAlchemy import for local-mode start-up)
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None  # database_url_problem reports an unreadable URL
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return None
    shown = parsed.render_as_string(hide_password=True)
    fix = (f"add ?sslmode=verify-full&sslrootcert=/path/to/ca.crt to the URL (or set database.sslmode and "
           f"database.ca_file), or set {DATABASE_WAIVER} on a network you trust")
    if backend != "postgresql":
        hosts = [parsed.host]
        # no host, or a socket folder, is a local socket: nothing crosses a network
        if any(h and not h.startswith("/") and not is_loopback_host(h) for h in hosts):
            return f"{DATABASE_KEY}: {shown} is not on this machine and TLS is checked only for PostgreSQL; {fix}"
        return None
    servers, service = database_servers(url, env)
    remote = [h for h in servers if h and not h.startswith("/") and not is_loopback_host(h)]
    url_mode = parsed.query.get("sslmode")
    mode = (url_mode if isinstance(url_mode, str) else None) or sslmode
    if service is not None and mode not in VERIFYING_SSLMODES:
        return (f"{DATABASE_KEY}: {shown} uses the PostgreSQL service {service!r} (?service= or PGSERVICE), "
                f"whose server synthpipe does not read from the service file, and its sslmode is {mode or 'not set'} (a service needs verify-ca or "
                f"verify-full); {fix}")
    if not remote:
        return None
    where = shown if remote == [parsed.host] else f"{shown} (libpq connects to {', '.join(remote)})"
    if mode not in TLS_SSLMODES:
        return (f"{DATABASE_KEY}: {where} is not on this machine and its sslmode is {mode or 'not set'} "
                f"(TLS needs require, verify-ca or verify-full); {fix}")
    return None


def database_url_problem(url: str) -> str | None:
    """Why SQLAlchemy could not use ``url`` at all (unreadable, a port out of range, a driver it
    does not know), or None; read without connecting. The message shows the URL without its password."""
    if url.split("://", 1)[0].lower() == "sqlite":
        return None  # the built-in driver (and no SQLAlchemy import for local-mode start-up)
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # ArgumentError for the shape, ValueError for a port that is no number
        try:
            shown = repr(redact(url))
        except ValueError:  # not even a URL to redact: shown by its setting only
            shown = "the URL"
        return f"{DATABASE_KEY}: {shown} is not a database URL ({_first_line(exc)}); " \
               "write dialect[+driver]://user:password@host:port/database"
    shown = parsed.render_as_string(hide_password=True)
    ports = ([parsed.port] if parsed.port is not None else []) + _query_values(parsed.query, "port")
    for port in ports:
        if not str(port).isdigit() or not 1 <= int(port) <= 65535:
            return f"{DATABASE_KEY}: {shown}: port {port} is not a port (1-65535)"
    try:
        parsed.get_dialect()
    except Exception as exc:  # NoSuchModuleError, or a dialect module that fails to import
        return (f"{DATABASE_KEY}: {shown}: no SQLAlchemy dialect {parsed.drivername!r} ({_first_line(exc)}); "
                "use sqlite:///PATH or postgresql+psycopg://...")
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def database_connect_args(url: str, sslmode: str | None, ca_file: Path | None) -> dict[str, str]:
    """libpq keywords the settings add to a PostgreSQL URL; the URL's own query wins."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    args: dict[str, str] = {}
    if sslmode and "sslmode" not in parsed.query:
        args["sslmode"] = sslmode
    if ca_file is not None and "sslrootcert" not in parsed.query:
        args["sslrootcert"] = str(ca_file)
    return args
