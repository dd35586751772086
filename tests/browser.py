"""A real headless Chromium driven over the DevTools protocol, for the tests of results/<profile>/index.html.

It uses the machine's own browser (Debian's `chromium`; `.ci/run` installs it when missing), started with
`--remote-debugging-pipe`: the protocol's JSON messages go over two pipes (the browser reads fd 3 and writes
fd 4, each message ended by a NUL byte), so no port, no websocket and no client library. A private
--user-data-dir, every host name resolving nowhere (--host-resolver-rules), and the process killed on exit.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "chromium-headless-shell")


class Unavailable(Exception):
    """No Chromium here; the message says what to install."""


def executable() -> str:
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise Unavailable(f"no headless browser on PATH ({', '.join(NAMES)}): install Debian's chromium "
                      "(`apt-get install chromium`; .ci/run does) to test index.html in a browser")


class Browser:
    """One browser process with one page; `load(url)` records every request the page makes."""

    def __init__(self, user_data_dir: Path, timeout: float = 60.0):
        self.timeout = timeout
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: the protocol's fixed descriptors (copies first: either may be 3 or 4)
            read, write = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [executable(), "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe",
             f"--user-data-dir={user_data_dir}", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--mute-audio",
             "about:blank"],
            # 3 and 4 are open here (the pipes take the lowest free numbers), kept open in the child after fds()
            preexec_fn=fds, pass_fds=(3, 4), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Network", "Runtime"):
                self.call(f"{domain}.enable", session=True)
        except BaseException:
            self.close()
            raise

    # ---- the protocol ----
    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                raise TimeoutError(f"no answer from the browser (exit code {self.process.poll()})")
            ready, _, _ = select.select([self._from_browser], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its protocol pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, since: int = 0) -> dict[str, Any]:
        """The first event `method` of the page from self.events[since:] on, waiting for it if need be."""
        for event in self.events[since:]:
            if event.get("method") == method and event.get("sessionId") == self.session:
                return event.get("params", {})
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == self.session:
                return event.get("params", {})

    # ---- what the tests ask ----
    def load(self, url: str) -> list[str]:
        """Navigate, wait for the load event (every image decoded or failed); the URLs the page requested."""
        start = len(self.events)
        navigated = self.call("Page.navigate", session=True, url=url)
        if "errorText" in navigated:
            raise RuntimeError(f"{url}: {navigated['errorText']}")
        if "loaderId" in navigated:  # a new document (not a jump to an anchor of this one)
            self.wait_for("Page.loadEventFired", since=start)
        self.evaluate("1")  # drain the events sent before the answer
        return [e["params"]["request"]["url"] for e in self.events[start:]
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == self.session]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        try:  # the browser and its helpers (renderer, zygote): its own process group, started above
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
