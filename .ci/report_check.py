"""Open a `snakemake --report` page in headless Chromium and check it as a person would see it.

Talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so it needs nothing but the
standard library and a Chromium binary. Checks that

- the page loads with no JavaScript exception and no console error,
- the report holds the expected categories (``--category``, repeatable),
- a render item opens and its videos decode (a frame of known size, in Chromium's own decoder),
- an image item (the training curves) opens and decodes,

and writes screenshots of the start page, the render item and the image item to ``--shots``.
Exits 1 with the reasons when a check fails.

    python .ci/report_check.py report.html --shots /tmp/shots --category Batch --category demo
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


class Browser:
    """A headless Chromium driven over the DevTools pipe (one page, flat sessions)."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # the protocol's fixed descriptors 3 and 4 in the child
            # via fresh high numbers first: either end may already be 3 or 4
            r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--autoplay-policy=no-user-gesture-required",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=fds,
            pass_fds=(3, 4),  # kept open in the child (set up by fds())
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def evaluate(self, expr: str, context: int | None = None):
        params = {"expression": expr, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        res = self.call("Runtime.evaluate", session=True, **params)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr[:60]}...: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def frame_context(self, url_prefix: str) -> int:
        """An execution context in the child frame whose URL starts with ``url_prefix``."""
        deadline = time.monotonic() + 20
        while True:  # the frame appears once React has rendered the item
            tree = self.call("Page.getFrameTree", session=True)["frameTree"]
            frames = [c["frame"] for c in tree.get("childFrames", [])]
            frame = next((f for f in frames if f.get("url", "").startswith(url_prefix)), None)
            if frame is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no frame {url_prefix}... in the page")
            time.sleep(0.2)
        world = self.call("Page.createIsolatedWorld", session=True, frameId=frame["id"])
        return world["executionContextId"]

    def errors(self) -> list[str]:
        """JavaScript exceptions and console/log errors seen so far."""
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d['text']}")
            elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append("console.error: " + " ".join(str(a.get("value")) for a in p["args"]))
            elif ev.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log error: {p['entry']['text']}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def poll(browser: Browser, expr: str, context: int | None = None, timeout: float = 20):
    """Evaluate ``expr`` until it is truthy (returns it) or ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.evaluate(expr, context)
        if value:
            return value
        time.sleep(0.2)
    return None


def show(browser: Browser, result: str, content: str) -> None:
    """Open a report item as its eye button does (``content``: "html" or "img")."""
    key = json.dumps(result)
    browser.evaluate(
        f"app.setView({{content: '{content}', contentPath: results[{key}].data_uri, "
        f"resultPath: {key}}}), true"
    )


def check(report: Path, shots: Path, categories: list[str], binary: str) -> list[str]:
    problems: list[str] = []
    shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(binary)
    try:
        browser.call("Page.navigate", session=True, url=report.resolve().as_uri())
        browser.wait_event("Page.loadEventFired", timeout=120)
        if not poll(
            browser, "document.querySelector('#app') && document.body.innerText.includes('RESULTS')"
        ):
            problems.append("the report's menu did not render")
        browser.screenshot(shots / "start.png")
        found = browser.evaluate("Object.keys(categories)")
        for name in categories:
            if name not in found:
                problems.append(f"category {name!r} missing (found {found})")
        results = browser.evaluate(
            "Object.entries(results).map(([p, r]) => [p, r.mime_type, r.name])"
        )
        # a render item: its videos must decode in the browser
        render = next(
            (p for p, mime, _ in results if "/renders/" in p and mime == "text/html"), None
        )
        if render is None:
            problems.append("no render item in the report")
        else:
            show(browser, render, "html")
            time.sleep(0.5)
            ctx = browser.frame_context("data:text/html")
            videos = poll(
                browser,
                "(() => { const v = [...document.querySelectorAll('video')];"
                " return v.length && v.every(x => x.readyState >= 2 && x.videoWidth > 0)"
                " ? v.map(x => [x.videoWidth, x.videoHeight]) : null; })()",
                ctx,
            )
            if not videos:
                state = browser.evaluate(
                    "[...document.querySelectorAll('video')].map(x => "
                    "[x.readyState, x.videoWidth, x.error && x.error.message])",
                    ctx,
                )
                problems.append(f"the videos of {render} do not decode: {state}")
            else:
                print(f"report check: {render}: {len(videos)} videos decode, sizes {videos}")
            time.sleep(1.0)  # a few frames in, for the screenshot
            browser.screenshot(shots / "render.png")
        # an image item: the training curves
        image = next((p for p, mime, _ in results if p.endswith("curves.png")), None)
        if image is None:
            problems.append("no training-curve image in the report")
        else:
            show(browser, image, "img")
            size = poll(
                browser,
                "(() => { const i = document.querySelector('#app img[src^=\"data:image\"]');"
                " return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight]"
                " : null; })()",
            )
            if not size:
                problems.append(f"the image {image} does not decode")
            browser.screenshot(shots / "curves.png")
        # the batch table and a few scenes' status (a failed one shows its log)
        pages = [p for p, mime, _ in results if mime == "text/html" and "/status/" in p]
        pages = [p for p, mime, _ in results if p.endswith("/summary.html")] + pages[:4]
        for i, page in enumerate(pages):
            show(browser, page, "html")
            ctx = browser.frame_context("data:text/html")
            if not poll(browser, "document.body && document.body.innerText.length > 0", ctx):
                problems.append(f"the item {page} is empty")
            name = Path(page).parent.name if "/status/" in page else "summary"
            browser.screenshot(shots / f"{i:02d}_{name}.png")
    except Exception as exc:  # a check that cannot go on: say why, keep the errors seen
        problems.append(f"check stopped: {type(exc).__name__}: {exc}")
    finally:
        problems += browser.errors()
        browser.close()
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--shots", type=Path, default=Path("report_shots"))
    ap.add_argument("--category", action="append", default=[])
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args()
    t0 = time.monotonic()
    problems = check(args.report, args.shots, args.category, args.chromium)
    for p in problems:
        print(f"report check: {p}", file=sys.stderr)
    verdict = "FAILED" if problems else "passed"
    print(f"report check {verdict} in {time.monotonic() - t0:.1f} s; screenshots in {args.shots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
