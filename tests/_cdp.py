"""Drives headless Chromium over the DevTools protocol (CDP) through --remote-debugging-pipe.

No websocket and no chromium-driver: Chromium reads CDP messages (JSON, each ended by a NUL
byte) from its file descriptor 3 and writes answers and events to its descriptor 4.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


class CDPError(RuntimeError):
    """A CDP command answered with an error, or the browser did not answer in time."""


class Browser:
    """One headless Chromium process; `page()` opens a tab driven through a flat CDP session."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None:
            raise RuntimeError("headless Chromium not installed (Debian: apt-get install chromium)")
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()
        # Move the child's ends above 10 so dup2 onto 3 and 4 cannot clobber one another.
        child_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)

        def _descriptors() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        flags = [
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(  # noqa: S603 (a fixed local binary)
            [CHROMIUM, *flags],
            preexec_fn=_descriptors,  # noqa: PLW1509 (no threads run Python in the child)
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._write = to_browser_write
        self._read = from_browser_read
        self._next_id = 0
        self._lock = threading.Lock()
        self._answers: dict[int, dict] = {}
        self._arrived = threading.Condition()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", {"discover": False}, timeout=30)

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    self._answers[-1] = {"error": {"message": "browser closed the pipe"}}
                    self._arrived.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._arrived:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                self._arrived.notify_all()

    def send(
        self, method: str, params: dict | None = None, *, session: str | None = None, timeout=20
    ) -> dict:
        """Sends one command and waits for its answer; raises CDPError on an error answer."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
            message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._arrived:
            while number not in self._answers:
                if -1 in self._answers:
                    raise CDPError(f"{method}: Chromium exited (code {self.process.poll()})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"{method}: no answer from Chromium in {timeout} s")
                self._arrived.wait(left)
            answer = self._answers.pop(number)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def page(self, url: str = "about:blank") -> Page:
        """Opens a new tab on `url` with Runtime, Log and Page events switched on."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page"):
            page.send(f"{domain}.enable")
        if url != "about:blank":
            page.goto(url)
        return page

    def close(self) -> None:
        """Asks Chromium to quit, then kills it if it lingers."""
        try:
            self.send("Browser.close", timeout=5)
        except CDPError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        os.close(self._write)
        os.close(self._read)


class Page:
    """One tab: evaluate JavaScript, wait for a condition, click, drag, type, screenshot."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict | None = None, *, timeout=20) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str, *, timeout=20) -> Any:
        """The value of a JavaScript expression (promises awaited); page exceptions raise."""
        answer = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression[:80]!r} raised {text}")
        return answer["result"].get("value")

    def wait(self, condition: str, *, timeout=15.0, what: str = "") -> Any:
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(condition)
            except CDPError:
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise CDPError(f"waited {timeout} s for {what or condition}; last value {value!r}")

    def settle(self, *, timeout=15.0) -> None:
        """Waits until the dashboard has no request in flight (html[data-pending="0"])."""
        time.sleep(0.05)
        self.wait(
            "document.documentElement.dataset.pending === '0'",
            timeout=timeout,
            what="the dashboard's requests",
        )

    def center(self, selector: str) -> tuple[float, float]:
        """The centre of the first element matching `selector`, scrolled into view."""
        box = self.evaluate(
            f"""(() => {{ const node = document.querySelector({json.dumps(selector)});
            if (!node) return null; node.scrollIntoView({{block: 'center'}});
            const r = node.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()"""
        )
        if not box:
            raise CDPError(f"no element matches {selector!r}")
        return box[0], box[1]

    def mouse(self, kind: str, x: float, y: float, *, buttons: int = 1) -> None:
        self.send(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1},
        )

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of an element."""
        x, y = self.center(selector)
        self.mouse("mouseMoved", x, y, buttons=0)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, buttons=0)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
        """Presses at `start`, moves in steps to `end`, releases there."""
        self.mouse("mouseMoved", *start, buttons=0)
        self.mouse("mousePressed", *start)
        for k in range(1, steps + 1):
            t = k / steps
            self.mouse(
                "mouseMoved", start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
            )
        self.mouse("mouseReleased", *end, buttons=0)

    def key(self, key: str, code: int) -> None:
        """Presses and releases one key (e.g. "ArrowLeft", 37) in the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code},
            )

    def screenshot(self, path: Path, *, width: int = 1280, height: int | None = None) -> Path:
        """A PNG of the page (its full height when `height` is None, capped at 2400 px)."""
        if height is None:
            height = min(2400, int(self.evaluate("document.documentElement.scrollHeight")))
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False}
        )
        self.send("Emulation.clearDeviceMetricsOverride")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries of this tab so far."""
        found = []
        for event in list(self.browser.events):
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(
                    "exception: "
                    + str(details.get("exception", {}).get("description") or details.get("text"))
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(
                    "console."
                    + params["type"]
                    + ": "
                    + " ".join(
                        str(arg.get("value", arg.get("description")))
                        for arg in params.get("args", [])
                    )
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(
                    f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
                )
        return found
