"""Fixtures for the data tests: a local HTTP file server (127.0.0.1) with Range support and faults."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class FileServer:
    """Serves `files` (url path -> bytes). Faults, per path:

    drop_after: send the full Content-Length but only this many bytes, then close (first N requests,
                N = drop_times, default every time);
    no_range:   ignore Range headers (always answer 200 with the whole file);
    html:       answer with an HTML page instead of the file.
    Every request is logged as (path, Range header or None).
    """

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    drop_times: dict[str, int] = field(default_factory=dict)
    no_range: set[str] = field(default_factory=set)
    html: set[str] = field(default_factory=set)
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes) -> str:
        self.files["/" + path.lstrip("/")] = data
        return self.url(path)

    def requests_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.log if p == "/" + path.lstrip("/")]


def _handler(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            server.log.append((path, rng))
            if path in server.html:
                body = b"<html><body>Google Drive - quota exceeded</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = server.files.get(path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and path not in server.no_range and rng.startswith("bytes="):
                start = int(rng[len("bytes="):].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            limit = server.drop_after.get(path)
            times = server.drop_times.get(path)
            if limit is not None and (times is None or times > 0):
                if times is not None:
                    server.drop_times[path] = times - 1
                self.wfile.write(body[:limit])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def http_server():
    server = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_retry_waits(monkeypatch):
    """Retries in these tests happen at once (the real default waits 2 s, 4 s, ...)."""
    from mdr.data import fetch

    monkeypatch.setattr(fetch.download, "DEFAULT_WAIT", 0.0)


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/nothing.bin"
