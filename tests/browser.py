"""A real sweep and a real browser, for the report's tests and for the README's screenshot.

:func:`drained_sweep` runs a small grid to the end with real ``gitqueue work`` processes (one
task fails for good, one fails once and then passes, one is reaped from a worker that died).
:func:`load` opens a page in Debian's headless Chromium through :class:`RefusingProxy`, a
proxy on 127.0.0.1 that refuses and records every connection, so that no request leaves the
machine; Chromium's net log then tells the page's own requests from the browser's (Chromium
checks for updates and the time even when told not to; those go to the proxy and no further).

``python tests/browser.py docs/report.png`` makes the screenshot the README shows.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from gitqueue import Queue
from gitqueue.testing import make_bare_repo

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
# As root in a container: no sandbox, no GPU (WebGL falls back to software), nothing in the background.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]  # fmt: skip
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-error:", "devtools:")

EXPERIMENT = """\
import json, math, os, sys, time
lr, bs, opt = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
time.sleep(0.25)  # a run long enough to show as a bar
if (lr, bs, opt) == (0.1, 64, "sgd"):
    sys.exit("diverged: loss is nan")  # fails every attempt: ends in failed/
if (lr, bs, opt) == (0.01, 32, "adam") and os.environ["GITQUEUE_ATTEMPT"] == "1":
    sys.exit("CUDA error: an illegal memory access")  # fails once, passes on its retry
acc = 0.93 - 0.08 * abs(math.log10(lr) + 2.3) + bs / 2000 + (0.015 if opt == "adam" else 0)
with open(os.environ["GITQUEUE_RESULT_FILE"], "w") as out:
    json.dump({"acc": round(acc, 4), "loss": round(1.2 - acc, 4)}, out)
"""


def gitqueue(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitqueue", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=300)  # fmt: skip


def drained_sweep(folder: Path, *, lrs: str = "0.1,0.01,0.001", bss: str = "32,64", workers: int = 2) -> str:
    """A queue whose grid lr x bs x opt was worked to the end by real worker processes."""
    url = str(make_bare_repo(folder / "queue.git"))
    script = folder / "experiment.py"
    script.write_text(EXPERIMENT)
    submitted = gitqueue("init", url, cwd=folder)
    assert submitted.returncode == 0, submitted.stderr
    submitted = gitqueue("submit", "--queue", url, "--grid", f"lr={lrs}", "--grid", f"bs={bss}",
                         "--grid", "opt=adam,sgd", "--max-attempts", "2", "--tag", "sweep-1")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    # A worker that claimed a task 15 s ago with a 5 s lease and died: reaped, then run again by the others.
    # It started (one heartbeat, 15 s ago too), so its reap spends the attempt.
    with Queue.open(url, worker="old-box/0", clock=lambda: time.time() - 15) as dead:
        run = dead.claim(lease=5)
        assert run is not None
        beat = f"heartbeat {run.id} by old-box/0\n\nGitqueue-Run: {run.token}\n"
        assert dead.store.heartbeat(run.token, parent=None, message=beat, author=dead.identity, when=dead.clock())
    reaped = gitqueue("reap", "--max-skew", "0", "--queue", url)
    assert reaped.returncode == 0 and "reaped 1" in reaped.stdout, reaped.stdout + reaped.stderr
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitqueue",
                "work",
                "--queue",
                url,
                "--worker",
                f"gpu-box/{i}",
                "--max-batch",
                "1",
                "--log-dir",
                str(folder / "logs"),
                "--",
                sys.executable,
                str(script),
                "{lr}",
                "{bs}",
                "{opt}",
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.wait(timeout=300)
    return url


class RefusingProxy:
    """An HTTP proxy on 127.0.0.1 that answers every connection 403 and records its first line."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    first = "(connection without a request line)"
                self.requests.append(first)

    def hosts(self) -> set[str]:
        """The hosts the recorded requests were for (``CONNECT host:443`` or ``GET http://host/...``)."""
        found = set()
        for line in self.requests:
            parts = line.split()
            target = parts[1] if len(parts) > 1 else ""
            found.add((urlsplit(target if "://" in target else f"//{target}").hostname or target).lower())
        return found

    def __enter__(self) -> RefusingProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@dataclass(frozen=True)
class Request:
    """A request Chromium started, from its net log: by the page (``page``) or by the browser itself."""

    url: str
    page: bool

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def load(
    page: Path, *, profile: Path, proxy: RefusingProxy, screenshot: Path | None = None
) -> tuple[str, list[Request]]:
    """Open ``page`` in headless Chromium: the DOM it rendered (or nothing, with ``screenshot``)
    and every request to a non-local URL in Chromium's net log."""
    assert CHROMIUM is not None
    netlog = profile.with_suffix(".netlog.json")
    action = [f"--screenshot={screenshot}", "--window-size=1280,2400"] if screenshot else ["--dump-dom"]
    argv = [
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
        "--proxy-bypass-list=<-loopback>", f"--log-net-log={netlog}", "--virtual-time-budget=15000", *action,
        page.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout, requests_in(netlog)


def requests_in(netlog: Path) -> list[Request]:
    """Requests for non-local URLs in a net log. A page's own requests carry the page's origin
    as initiator; the browser's own (update checks, network time) carry 'not an origin'."""
    text = netlog.read_text(errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short: close its event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    found = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        url = str(params.get("url", ""))
        if event.get("type") == start and url and not url.startswith(LOCAL_SCHEMES):
            found.append(Request(url, page=params.get("initiator") != "not an origin"))
    return found


class Dom(HTMLParser):
    """The elements of a rendered page: (tag, attributes, the data-plot it sits in, its parents' tags)."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "source", "wbr"})

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None, tuple[str, ...]]] = []
        self.texts: list[tuple[str | None, str]] = []  # (the data-plot it sits in, text), scripts left out
        self._stack: list[tuple[str, str | None]] = []
        self.feed(text)

    def handle_data(self, data: str) -> None:
        if data.strip() and not (self._stack and self._stack[-1][0] in ("script", "style")):
            self.texts.append((self._stack[-1][1] if self._stack else None, data.strip()))

    def text(self, plot: str) -> list[str]:
        return [t for p, t in self.texts if p == plot]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        plot = found.get("data-plot") or (self._stack[-1][1] if self._stack else None)
        self.elements.append((tag, found, plot, tuple(t for t, _ in self._stack)))
        if tag not in self.VOID:
            self._stack.append((tag, plot))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self._stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index][0] == tag:
                del self._stack[index:]
                return

    def find(self, *, tag: str | None = None, cls: str | None = None, plot: str | None = None) -> list[dict[str, str]]:
        return [
            attrs
            for t, attrs, p, _ in self.elements
            if (tag is None or t == tag) and (cls is None or cls in attrs.get("class", "").split())
            and (plot is None or p == plot)
        ]  # fmt: skip


def main(target: Path) -> None:
    """Run a demo sweep, report it and screenshot the page into ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = drained_sweep(folder, lrs="0.3,0.1,0.03,0.01,0.003,0.001", bss="32,64", workers=3)
        made = gitqueue("report", "--queue", url, "-o", str(folder / "report.html"))
        assert made.returncode == 0, made.stderr
        with RefusingProxy() as proxy:
            _, started = load(
                folder / "report.html", profile=folder / "profile", proxy=proxy, screenshot=target.resolve()
            )
        assert not [r for r in started if r.page], started


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/report.png"))
