"""Drive headless Chromium over the DevTools protocol: enough to sign in, click, read, screenshot.

No Selenium and no chromedriver: Chromium is started with `--remote-debugging-port=0`, writes the
port it chose to `DevToolsActivePort` in its profile, and we speak CDP (JSON over a WebSocket)
with the `websockets` threading client. The calls are synchronous with their own deadlines; trio
tests run them through `trio.to_thread.run_sync`, so the server under test keeps serving.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
                  "--disable-dev-shm-usage", "--no-default-browser-check", "--hide-scrollbars",
                  "--mute-audio", "--remote-debugging-address=127.0.0.1",
                  "--remote-debugging-port=0")


class BrowserError(Exception):
    """Chromium could not be started, or a page did not do what we waited for."""


def find_chromium() -> str | None:
    """`$CHROMIUM`, else the first Chromium or Chrome on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, profile_dir: Path, *, binary: str, width: int = 1280,
                 height: int = 900) -> None:
        self.profile_dir = Path(profile_dir)
        self.binary = binary
        self.width = width
        self.height = height
        self.log_path = self.profile_dir.parent / f"{self.profile_dir.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._stack = ExitStack()
        self._session: str | None = None
        self._next_id = 0

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- life cycle

    def start(self, timeout: float = 30.0) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}",
                 f"--window-size={self.width},{self.height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if self._process.poll() is not None:
                raise BrowserError(f"{self.binary} exited with {self._process.returncode} "
                                   f"before DevTools was ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise BrowserError(f"{self.binary} did not open DevTools within {timeout} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
        self._ws = self._stack.enter_context(connect(
            url, proxy=None, max_size=None, compression=None, open_timeout=timeout,
            ping_interval=None))
        target = self.send("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = self.send("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, page=False)
        self._session = attached["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})

    def close(self) -> None:
        if self._ws is not None:
            try:
                self.send("Browser.close", page=False, timeout=5)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            try:
                self._stack.close()
            except Exception:  # noqa: BLE001
                pass
            self._ws = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)    # the group we started, by its id
                process.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- the protocol

    def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True,
             timeout: float = 15.0) -> dict[str, Any]:
        """One CDP command (to the page's session unless `page` is False); its result."""
        if self._ws is None:
            raise BrowserError("the browser is not running")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if page:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"{method}: no answer within {timeout} s")
            try:
                reply = json.loads(self._ws.recv(timeout=remaining))
            except TimeoutError:
                continue
            if reply.get("id") != self._next_id:
                continue                                  # an event, or a late answer
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error'].get('message')}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0, interval: float = 0.1) -> Any:
        """Poll until `expression` is truthy; its value. Errors while a page loads are retried."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.evaluate(expression)
                if last:
                    return last
            except BrowserError as exc:
                last = exc
            if time.monotonic() > deadline:
                try:
                    where = self.evaluate("location.href")
                except BrowserError:
                    where = "?"
                raise BrowserError(f"timed out after {timeout} s waiting for {expression!r} "
                                   f"on {where} (last: {last!r})")
            time.sleep(interval)

    # -- conveniences

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout)

    def fill(self, selector: str, value: str) -> None:
        self.evaluate(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                      f" el.value = {json.dumps(value)};"
                      " el.dispatchEvent(new Event('input', {bubbles: true})); })()")

    def click(self, selector: str) -> None:
        found = self.evaluate(f"(() => {{ const el = document.querySelector("
                              f"{json.dumps(selector)}); if (!el) return false; el.click();"
                              " return true; })()")
        if not found:
            raise BrowserError(f"nothing to click at {selector!r}")

    def screenshot(self, path: Path) -> bytes:
        data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=30)["data"]
        png = base64.b64decode(data)
        Path(path).write_bytes(png)
        return png


def png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the pixel data) of a PNG: is it a real picture?"""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    offset, width, height, idat = 8, 0, 0, b""
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunk = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
        offset += 12 + length
    return width, height, len(set(zlib.decompress(idat)))
