"""Open pages in a real headless Chromium and report what a person would see.

Used to check that the MLflow UI shows the leaderboard and that the HTML report renders, with
screenshots for the README. It speaks the DevTools protocol over a websocket (``aiohttp``, which
MLflow and Ray already install) to Debian's ``chromium`` binary, so no browser-automation
package or browser download is needed: ``apt-get install chromium`` is the whole setup.

A visit waits for the page's load event, then for a JavaScript condition (bounded in time), and
collects every console error, uncaught exception and failed resource load the page reported.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import NMLBenchError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(NMLBenchError):
    """No Chromium binary here; the message says how to install one."""


def find_chromium() -> str:
    """Path of a Chromium/Chrome binary (``NMLBENCH_CHROMIUM`` wins), or ``BrowserUnavailable``."""
    explicit = os.environ.get("NMLBENCH_CHROMIUM")
    if explicit:
        if shutil.which(explicit) or Path(explicit).is_file():
            return shutil.which(explicit) or explicit
        raise BrowserUnavailable(f"NMLBENCH_CHROMIUM={explicit!r} is not an executable")
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailable(
        "no Chromium found (looked for " + ", ".join(CANDIDATES) + "); install it with "
        "`apt-get install -y chromium` (Debian/Ubuntu, as root) or point NMLBENCH_CHROMIUM at a binary"
    )


@dataclass
class Visit:
    """What a page showed: its text, a PNG screenshot, and the errors it logged."""

    url: str
    ready: bool  # the wait condition held before the timeout
    text: str = ""  # document.body.innerText
    screenshot: bytes = b""  # PNG of the viewport
    errors: list[str] = field(default_factory=list)
    value: Any = None  # result of the ``extract`` expression, if any

    def save_screenshot(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.screenshot)
        return p


class Chromium:
    """A headless Chromium process with a private profile; ``visit`` opens one page at a time.

    Use as a context manager: the browser and its temporary profile go away on exit.
    """

    def __init__(self, width: int = 1600, height: int = 1000, executable: str | None = None) -> None:
        self.width, self.height = width, height
        self.executable = executable or find_chromium()
        self._profile = tempfile.mkdtemp(prefix="nmlbench-chromium-")
        self._proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> Chromium:
        args = [
            self.executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            f"--user-data-dir={self._profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise BrowserUnavailable(f"{self.executable} did not open its DevTools port within 60 s")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None
        shutil.rmtree(self._profile, ignore_errors=True)

    def visit(
        self,
        url: str,
        *,
        wait_for: str | None = None,
        extract: str | None = None,
        timeout_s: float = 60.0,
        settle_s: float = 1.0,
        before_screenshot: str | None = None,
        full_page: bool = False,
    ) -> Visit:
        """Open ``url`` in a fresh tab; wait for ``wait_for`` (a JS expression) to be truthy.

        ``extract`` is a JS expression whose JSON value comes back as ``Visit.value``. After the
        condition holds, ``settle_s`` more seconds let late renders and errors arrive.
        ``before_screenshot`` (JS) runs after the extraction, e.g. to close a side panel.
        ``full_page`` captures the whole document instead of the viewport.
        """
        if self._proc is None:
            raise RuntimeError("use Chromium as a context manager")
        return asyncio.run(self._visit(url, wait_for, extract, timeout_s, settle_s, before_screenshot, full_page))

    async def _visit(
        self,
        url: str,
        wait_for: str | None,
        extract: str | None,
        timeout_s: float,
        settle_s: float,
        before_screenshot: str | None,
        full_page: bool,
    ) -> Visit:
        import aiohttp

        base = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{base}/json/new?about:blank") as resp:
                target = await resp.json(content_type=None)
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    return await _Session(ws, self.width, self.height).run(
                        url, wait_for, extract, timeout_s, settle_s, before_screenshot, full_page
                    )
            finally:
                async with http.get(f"{base}/json/close/{target['id']}") as resp:
                    await resp.read()


class _Session:
    """One DevTools conversation with a tab: commands by id, events collected as they come."""

    def __init__(self, ws: Any, width: int, height: int) -> None:
        self.ws, self.width, self.height = ws, width, height
        self._next = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.errors: list[str] = []
        self.loaded = asyncio.Event()

    async def _reader(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            self._event(data.get("method", ""), data.get("params", {}))

    def _event(self, method: str, p: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            parts = [str(a.get("value", a.get("description", ""))) for a in p.get("args", [])]
            self.errors.append("console.error: " + " ".join(parts))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict:
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send_str(json.dumps({"id": self._next, "method": method, "params": params or {}}))
        reply = await asyncio.wait_for(fut, timeout_s)
        if "error" in reply:
            raise RuntimeError(f"DevTools {method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        res = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in res:
            return None
        return res.get("result", {}).get("value")

    async def run(
        self,
        url: str,
        wait_for: str | None,
        extract: str | None,
        timeout_s: float,
        settle_s: float,
        before_screenshot: str | None = None,
        full_page: bool = False,
    ) -> Visit:
        reader = asyncio.create_task(self._reader())
        try:
            for domain in ("Page", "Runtime", "Log"):
                await self.send(f"{domain}.enable")
            await self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            )
            deadline = time.monotonic() + timeout_s
            nav = await self.send("Page.navigate", {"url": url})
            if nav.get("errorText"):
                return Visit(url, False, errors=[f"navigation: {nav['errorText']}"])
            try:
                await asyncio.wait_for(self.loaded.wait(), max(1.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            ready = self.loaded.is_set()
            if wait_for:
                ready = False
                while time.monotonic() < deadline:
                    if await self.evaluate(f"Boolean({wait_for})"):
                        ready = True
                        break
                    await asyncio.sleep(0.25)
            await asyncio.sleep(settle_s)
            text = await self.evaluate("document.body ? document.body.innerText : ''") or ""
            value = await self.evaluate(f"JSON.stringify({extract})") if extract else None
            if before_screenshot:
                await self.evaluate(before_screenshot)
                await asyncio.sleep(0.5)
            params: dict[str, Any] = {"format": "png"}
            if full_page:
                size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
                params.update(
                    captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                )
            shot = await self.send("Page.captureScreenshot", params)
            return Visit(
                url,
                ready,
                text,
                base64.b64decode(shot.get("data", "")),
                list(self.errors),
                json.loads(value) if value else None,
            )
        finally:
            reader.cancel()
