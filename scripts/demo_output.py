"""Run ``provisioning demo`` and write its output, normalised, into README.md's sample
(between the markers below), so the sample the README shows is a real run's.

    .venv/bin/python scripts/demo_output.py          # run the demo, rewrite the sample
    .venv/bin/python scripts/demo_output.py --check  # run it, exit 1 when the sample differs

tests/integration/test_demo_output.py runs the check. The demo runs as a newcomer's would
(no ``PROVISIONING_*`` setting of this shell reaches it) on an embedded ``redis-server``
(``PROVISIONING_EMBEDDED_REDIS=redis-server``, so the sample does not depend on whether
the machine has one). What varies from run to run is normalised, in this order:

1. times: every ISO 8601 UTC time (``2026-12-07T11:26:05.342487Z``) becomes
   ``YYYY-MM-DDThh:mm:ss.ffffffZ``;
2. loopback ports: ``127.0.0.1:36941`` becomes ``127.0.0.1:PORT``;
3. the log directory: ``/tmp/provisioning-demo-koh8iqzi`` becomes
   ``/tmp/provisioning-demo-XXXXXXXX``;
4. failed-task entry ids, a hash of the failed message (a retry's message holds its
   record's creation time): the 12 hex digits opening a line of the failed tasks become
   ``ENTRYID``.

Record ids, channel ids, event ids, versions, statuses and messages are the example's own
and stay as they are: a change in what the demo does changes the sample.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START = "<!-- demo output: written by scripts/demo_output.py, do not edit -->"
END = "<!-- end of demo output -->"

_TIME = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
_PORT = re.compile(r"\b127\.0\.0\.1:\d+")
_LOGDIR = re.compile(r"\S*/provisioning-demo-[A-Za-z0-9_]+")
_ENTRY = re.compile(r"^[0-9a-f]{12}(?=  provisioning\.)", re.MULTILINE)


def normalise(output: str) -> str:
    """The demo's output with what varies from run to run replaced (see the docstring)."""
    text = _TIME.sub("YYYY-MM-DDThh:mm:ss.ffffffZ", output)
    text = _PORT.sub("127.0.0.1:PORT", text)
    text = _LOGDIR.sub("/tmp/provisioning-demo-XXXXXXXX", text)  # noqa: S108 - a placeholder
    return _ENTRY.sub("ENTRYID", text)


def run_demo(timeout: float = 300.0) -> str:
    """Run the demo as a newcomer would and return its normalised standard output."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PROVISIONING_")}
    env["PROVISIONING_EMBEDDED_REDIS"] = "redis-server"
    script = Path(sys.executable).with_name("provisioning")
    done = subprocess.run(  # noqa: S603 - our own console script, no shell
        [str(script), "demo"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"provisioning demo exited {done.returncode}:\n{done.stderr}")
    return normalise(done.stdout)


def rewritten(text: str, sample: str) -> str:
    """README's text with the sample between the markers replaced by ``sample``."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README.md lacks the markers {START!r} … {END!r}")
    return f"{head}{START}\n```\n$ provisioning demo\n{sample.rstrip()}\n```\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    new = rewritten(text, run_demo())
    if "--check" in argv:
        if new != text:
            sys.stderr.writelines(difflib.unified_diff(
                text.splitlines(keepends=True), new.splitlines(keepends=True),
                "README.md", "README.md (this run)"))
            print("README.md's demo output differs from this run: run "
                  "`.venv/bin/python scripts/demo_output.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
