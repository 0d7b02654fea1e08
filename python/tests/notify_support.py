"""A real HTTP receiver on 127.0.0.1 for the end-of-run notice (issue 19): records what it was sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """Where it listens, how it answers (status, delay) and every notice it received (headers, body)."""

    url: str = ""
    status: int = 204
    delay_s: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)

    def notices(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.received]


@contextmanager
def receiver(status: int = 204, delay_s: float = 0.0, path: str = "/hooks/T0KEN-in-the-path") -> Iterator[Receiver]:
    """A receiver answering ``status`` after ``delay_s`` to POSTs on any path; yields it, then stops it."""
    state = Receiver(status=status, delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            state.received.append({"path": self.path, "headers": dict(self.headers.items()),
                                   "raw": raw, "body": json.loads(raw or b"null")})
            time.sleep(state.delay_s)
            try:
                self.send_response(state.status)
                self.end_headers()
            except OSError:
                pass  # the client gave up (a slow receiver)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL nothing listens on (a receiver that is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/T0KEN-in-the-path"


def refuse_ddl(db: Any, name: str, tags: list[str]) -> None:
    """An event trigger that makes the given DDL fail: a real failure inside the migration or the rollback."""
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"""
                create function {name}() returns event_trigger language plpgsql as $$
                begin raise exception 'injected failure: % refused by the test', tg_tag; end $$;
                create event trigger {name} on ddl_command_start
                  when tag in ({", ".join("'" + t + "'" for t in tags)}) execute function {name}();""")
    finally:
        conn.close()
