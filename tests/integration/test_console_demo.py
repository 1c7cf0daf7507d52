"""``provisioning demo --console``: the example runs, then the console is served with a
one-time login link printed; the link logs in once; SIGTERM stops everything by pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from worker.emulators.embedded import free_port

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("provisioning")


def test_demo_console_prints_a_one_time_link_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    out = tmp_path / "demo.out"
    with open(out, "wb") as stream:
        demo = subprocess.Popen([str(SCRIPT), "demo", "--console", "--port", str(port)],
                                env=env, stdout=stream, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        link = None
        deadline = time.monotonic() + 240
        while link is None:
            found = re.search(rf"(http://127\.0\.0\.1:{port}/ui/login/once\?code=\S+)",
                              out.read_text(errors="replace"))
            link = found.group(1) if found else None
            assert demo.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.5)
        with httpx.Client(timeout=10) as browser:
            first = browser.get(link)
            assert first.status_code == 303 and first.headers["location"] == "/ui/"
            overview = browser.get(f"http://127.0.0.1:{port}/ui/")
            assert overview.status_code == 200
            assert "demo" in overview.text and "operator" in overview.text
            assert re.search(r'<span class="value">2</span><span class="label">failed-task',
                             overview.text)
        again = httpx.get(link, timeout=10)
        assert again.status_code == 401
        assert "used already or has expired" in again.text
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert "stopping" in out.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
