"""Drive ``afford app`` in a real browser: headless Chromium through Playwright, for the end-to-end
test and the latency benchmark. Nothing is downloaded: the browser is the machine's (Debian's
``chromium`` package, or ``$AFFORD_CHROMIUM``), started with the flags a closed network needs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from afford.errors import AffordError

CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")
INSTALL_HINT = "apt-get install chromium (Debian), or set AFFORD_CHROMIUM to a Chromium/Chrome executable"


def find_chromium() -> str | None:
    """The Chromium executable to drive (``$AFFORD_CHROMIUM`` first), or None."""
    for candidate in (os.environ.get("AFFORD_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(runs: Sequence[str | Path], log: Path, timeout_s: float = 120,
               tmpdir: Path | None = None) -> Iterator[str]:
    """``afford app --run RUNS`` in a subprocess on a free port (its temporary files in ``tmpdir``
    when given); yields its URL, stops it (SIGTERM) after."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "afford.cli", "app", "--run", *map(str, runs), "--port",
                                 str(port)], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AffordError(f"afford app exited with {proc.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise AffordError(f"afford app did not listen within {timeout_s:.0f} s:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def launch(playwright: Any, executable: str) -> Any:
    """A headless Chromium browser."""
    return playwright.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))


def choose(page: Any, elem_id: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown the way a user does: open it, click the option."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=value, exact=True).click()


def rendered(page: Any, selector: str, after: str | None = None, timeout_s: float = 60) -> bytes:
    """The bytes of the image at ``selector`` once it is drawn and its source differs from ``after``."""
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0"
        " && i.src !== old; }", arg=[selector, after], timeout=timeout_s * 1000)
    return page.request.get(page.locator(selector).get_attribute("src")).body()
