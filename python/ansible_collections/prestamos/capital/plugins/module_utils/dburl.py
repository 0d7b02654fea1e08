"""The one DATABASE_URL parser and the one pgpass writer, for the roles and the CLI alike.

Plain typed Python (no Ansible imports): the connection role reaches it through the filter
`prestamos.capital.capital_conn`, the module `capital_pgpass` through module_utils, and the CLI
(`capital_migrate.connection`) imports it directly, so a URL means the same thing everywhere.

The URL follows libpq's own parser (fe-connect.c, conninfo_uri_parse_options), not RFC 3986:

- the user name and password end at the first `@` before any `/`; so `#`, `?` and `:` in a password
  need no encoding, while `/` and `@` must be percent-encoded (`%2F`, `%40`), as psql requires too;
- every part is percent-decoded (`%` must be followed by two hex digits; `%00` is refused; `+` stays `+`);
- query parameters `host`, `port`, `user`, `password`, `dbname`, `sslmode` (and `ssl=true`) override the
  parts before them; `postgresql:///db?host=/var/run/postgresql` and `postgresql://%2Ftmp/db` name a
  Unix-socket directory.

A URL that cannot be used raises `DatabaseUrlError`, whose message never holds anything of the URL
after the user name: it names the part at fault and how to write it, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMES = ("postgresql://", "postgres://")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
QUERY_KEYS = ("host", "port", "user", "password", "dbname", "sslmode")
# libpq keywords a URL may carry that this tool does not pass on: named in the error, since they are not secret.
_OTHER_LIBPQ_KEYS = frozenset({
    "hostaddr", "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
    "sslcompression", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode",
    "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
    "passfile", "channel_binding", "replication", "require_auth", "sslnegotiation", "sslcertmode",
})
_HEX = re.compile(r"[0-9A-Fa-f]{2}")
ENCODE_HINT = "percent-encode / as %2F, @ as %40 and % as %25 in the user name and password"


class DatabaseUrlError(ValueError):
    """A DATABASE_URL that cannot be used; the message names the faulty part, never a value after the user."""


@dataclass(frozen=True)
class ConnParts:
    """host, port, user, dbname, sslmode and password of one connection; None where not given."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str | None = None
    sslmode: str | None = None
    password: str | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """For Ansible: every key present, "" for unknown strings and 0 for an unknown port."""
        return {
            "host": self.host or "", "port": self.port or 0, "user": self.user or "",
            "password": self.password or "", "dbname": self.dbname or "", "sslmode": self.sslmode or "",
        }


def _decode(text: str, part: str) -> str:
    """libpq's percent-decoding (conninfo_uri_decode): %XX only, no %00, '+' is a plus sign."""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8")
    while i < len(raw):
        if raw[i] == 0x25:  # '%'
            pair = raw[i + 1:i + 3].decode("ascii", "replace")
            if not _HEX.fullmatch(pair):
                raise DatabaseUrlError(f"the database URL's {part} has a % not followed by two hex digits "
                                       f"({ENCODE_HINT})")
            if pair == "00":
                raise DatabaseUrlError(f"the database URL's {part} holds %00, which libpq refuses")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise DatabaseUrlError(f"the database URL's {part} does not decode to UTF-8 text") from None


def parse_port(value: str | int | None, source: str) -> int | None:
    """A TCP port 1-65535 from text or a number; None for empty; `source` names it in the error."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DatabaseUrlError(f"{source} must be a port number 1-65535")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise DatabaseUrlError(f"{source} must be a port number 1-65535")
    return int(text)


def _sslmode(value: str | None, source: str) -> str | None:
    if value is None or value == "":
        return None
    if value not in SSLMODES:
        raise DatabaseUrlError(f"{source} must be one of {', '.join(SSLMODES)}")
    return value


def parse_database_url(url: str) -> ConnParts:
    """The connection a libpq URL describes (see the module docstring for the rules)."""
    text = url.strip()
    scheme = next((s for s in SCHEMES if text.startswith(s)), None)
    if scheme is None:
        found = text.split("://", 1)[0] if "://" in text else ""
        shown = found if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", found) else "none"
        raise DatabaseUrlError(f"the database URL must start with postgresql:// (or postgres://); "
                               f"got scheme {shown!r}")
    rest = text[len(scheme):]
    values: dict[str, str] = {}
    # Credentials: up to the first '@' before any '/', as libpq looks for them.
    ahead = re.match(r"[^@/]*", rest)
    end = ahead.end() if ahead else 0
    if end < len(rest) and rest[end] == "@":
        credentials, rest = rest[:end], rest[end + 1:]
        user, colon, password = credentials.partition(":")
        if user:
            values["user"] = _decode(user, "user name")
        if colon and password:
            values["password"] = _decode(password, "password")
    # Host and port up to '/', '?' or end; a bracketed IPv6 address may hold ':'.
    netloc_match = re.match(r"(\[[^\]]*\]|[^:/?,\[\]]*)(?::([^/?,]*))?", rest)
    netloc_end = netloc_match.end() if netloc_match else 0
    host_text = netloc_match.group(1) if netloc_match else ""
    port_text = (netloc_match.group(2) if netloc_match else None) or ""
    tail = rest[netloc_end:]
    if tail[:1] not in ("", "/", "?"):
        if tail[:1] == ",":
            raise DatabaseUrlError("the database URL names several hosts; give exactly one")
        raise DatabaseUrlError("the database URL's host part cannot be read (an unencoded / or @ in the "
                               f"password ends it early: {ENCODE_HINT})")
    if host_text.startswith("["):
        host_text = host_text[1:-1]
        if not host_text:
            raise DatabaseUrlError("the database URL's IPv6 host address is empty")
    if host_text:
        values["host"] = _decode(host_text, "host")
    if port_text and not port_text.isdigit():
        # libpq would fail the same way; say why it usually happens instead of showing the text.
        raise DatabaseUrlError(f"the database URL's port is not a number ({ENCODE_HINT}; an unencoded / "
                               "in the password makes what precedes it read as host:port)")
    if port_text:
        values["port"] = port_text
    query = ""
    if tail.startswith("/"):
        path, _mark, query = tail[1:].partition("?")
        if "@" in path:
            # libpq would take it as part of the database name; it is a password's / left unencoded.
            raise DatabaseUrlError(f"the database URL has an @ after its host part ({ENCODE_HINT})")
        if path:
            values["dbname"] = _decode(path, "database name")
    elif tail.startswith("?"):
        query = tail[1:]
    for index, pair in enumerate(p for p in query.split("&") if p != ""):
        key_text, eq, value_text = pair.partition("=")
        if not eq:
            raise DatabaseUrlError(f"query parameter {index + 1} of the database URL has no '='")
        key = _decode(key_text, f"query parameter {index + 1}'s name")
        value = _decode(value_text, f"query parameter {key if key in QUERY_KEYS else index + 1}")
        if key == "ssl":
            if value != "true":
                raise DatabaseUrlError("the database URL's ssl parameter may only be ssl=true (use sslmode=)")
            key, value = "sslmode", "require"
        if key not in QUERY_KEYS:
            named = f"parameter {key!r}" if key in _OTHER_LIBPQ_KEYS else f"query parameter {index + 1}"
            raise DatabaseUrlError(f"the database URL's {named} is not supported here; only "
                                   f"{', '.join(QUERY_KEYS)} (put other libpq settings in the environment)")
        values[key] = value
    host = values.get("host")
    if host is not None and ("@" in host or "," in host):
        raise DatabaseUrlError(f"the database URL's host part cannot be read ({ENCODE_HINT})")
    if host is not None and any(ord(c) < 32 for c in host):
        raise DatabaseUrlError("the database URL's host holds a control character")
    return ConnParts(
        host=host,
        port=parse_port(values.get("port"), "the database URL's port"),
        user=values.get("user"),
        dbname=values.get("dbname"),
        sslmode=_sslmode(values.get("sslmode"), "the database URL's sslmode"),
        password=values.get("password"),
    )


def parts_from_libpq_env(environ: Mapping[str, str]) -> ConnParts:
    """The connection the libpq environment describes (PGHOST, PGPORT, ..., PGPASSWORD)."""
    return ConnParts(
        host=environ.get("PGHOST") or None,
        port=parse_port(environ.get("PGPORT"), "PGPORT"),
        user=environ.get("PGUSER") or None,
        dbname=environ.get("PGDATABASE") or None,
        sslmode=_sslmode(environ.get("PGSSLMODE"), "PGSSLMODE"),
        password=environ.get("PGPASSWORD") or None,
    )


def parts_from_variables(variables: Mapping[str, Any]) -> ConnParts:
    """The `capital_db_*` variables (inventory, vault, -e) as ConnParts; empty values are unset."""

    def text(name: str) -> str | None:
        value = variables.get(name)
        return None if value is None or value == "" else str(value)

    return ConnParts(
        host=text("capital_db_host"),
        port=parse_port(variables.get("capital_db_port"), "capital_db_port"),
        user=text("capital_db_user"),
        dbname=text("capital_db_name"),
        sslmode=_sslmode(text("capital_db_sslmode"), "capital_db_sslmode"),
        password=text("capital_db_password"),
    )


def first_of(*layers: ConnParts) -> ConnParts:
    """Each part from the first layer that has it (the precedence of docs/design.md, Connection)."""
    merged = ConnParts()
    for name in ("host", "port", "user", "dbname", "sslmode", "password"):
        value = next((getattr(layer, name) for layer in layers if getattr(layer, name) not in (None, "")), None)
        merged = replace(merged, **{name: value})
    return merged


def resolve(variables: Mapping[str, Any], database_url: str | None, environ: Mapping[str, str]) -> ConnParts:
    """capital_db_* variables, then DATABASE_URL, then the libpq environment; sslmode defaults to prefer."""
    url_parts = parse_database_url(database_url) if database_url else ConnParts()
    merged = first_of(parts_from_variables(variables), url_parts, parts_from_libpq_env(environ))
    return replace(merged, sslmode=merged.sslmode or "prefer")


def pgpass_escape(value: str) -> str:
    r"""A pgpass field: libpq reads '\\' and '\:' as a literal backslash and colon."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass_line(password: str) -> str:
    """One pgpass line matching any host, port, database and user; refuses what a line cannot hold."""
    if "\n" in password or "\r" in password:
        raise ValueError("The database password contains a line break, which a pgpass file cannot hold.")
    return "*:*:*:*:" + pgpass_escape(password) + "\n"
