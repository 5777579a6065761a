"""The sandbox Graph API in a process of its own, for runs that load the machine."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from publishers.sandbox import SandboxControl
from streams.broker import free_port


class ProcessSandboxControl(SandboxControl):
    """The control API of a sandbox running in process `pid`."""

    def __init__(self, base_url: str, pid: int) -> None:
        super().__init__(base_url)
        self.pid = pid


@contextlib.contextmanager
def sandbox_process(log_path: Path) -> Iterator[ProcessSandboxControl]:
    """The sandbox Graph API in a process of its own: in this one, it would share the GIL with the run
    and answer a thousand posts' calls slowly enough to time the handler's requests out."""
    port = free_port()
    with open(log_path, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "publishers.sandbox", "--port", str(port),
                                    "--container-delay", "0"], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    control = ProcessSandboxControl(f"http://127.0.0.1:{port}", process.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                control.counters()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the sandbox did not start (see {log_path})") from None
                time.sleep(0.1)
        yield control
    finally:
        control.close()
        process.terminate()
        process.wait(15)
