"""Run the real `clinaiops` server as a child process for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

CLINAIOPS = Path(sys.executable).with_name("clinaiops")
_SCRUBBED = {"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without CLINAIOPS_ settings or terminal hints, plus overrides."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CLINAIOPS_") and k not in _SCRUBBED
    }
    env.update(NO_COLOR="1", **overrides)
    return env


@dataclass
class LiveServer:
    """A `clinaiops` process serving on loopback; `log` collects its output."""

    args: list[str]
    env: dict[str, str]
    cwd: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The process's combined stdout and stderr."""
        return self.cwd / f"server-{self.port}.log"

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, timeout: float = 60.0) -> LiveServer:
        """Start and wait (bounded) until /readyz answers 200."""
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [str(CLINAIOPS), *self.args, "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                response = httpx2.get(f"{self.base_url}/readyz", timeout=2.0)
            except httpx2.TransportError as exc:
                last = type(exc).__name__
            else:
                if response.status_code == 200:
                    return self
                last = f"{response.status_code} {response.text}"
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"/readyz not 200 within {timeout:.0f} s ({last}):\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app (the test's own, on its test database) on a loopback port in a
    thread, for browser tests; yields its base URL and stops it afterwards."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
