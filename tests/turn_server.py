"""A private coturn (Debian's `coturn`, its `turnserver`) on free loopback ports, started and
stopped by the test that needs a real TURN relay."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"


def available() -> bool:
    return Path(TURNSERVER).exists()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TurnServer:
    """coturn with coturn's shared-secret (time-limited) credentials, relaying on loopback."""

    def __init__(self, folder: Path, secret: str = "turn-secret-for-tests") -> None:
        self.folder = folder
        self.secret = secret
        self.port = free_udp_port()
        relay = free_udp_port() // 10 * 10
        self.args = [TURNSERVER, "-n", "--listening-ip=127.0.0.1", f"--listening-port={self.port}",
                     "--relay-ip=127.0.0.1", f"--min-port={relay}", f"--max-port={relay + 9}",
                     "--realm=avatar", "--use-auth-secret", f"--static-auth-secret={secret}",
                     "--no-tls", "--no-dtls", "--no-tcp-relay", "--no-cli", "--allow-loopback-peers",
                     "--fingerprint", f"--pidfile={folder}/turnserver.pid", f"--log-file={folder}/turn.log",
                     "--simple-log", "--verbose"]
        self.process: subprocess.Popen | None = None
        self.allocations = 0

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.process.returncode}; see {self.folder}/turn.log")
            if "listener opened" in self.log() or "Total General servers" in self.log():
                return
            time.sleep(0.1)

    def log(self) -> str:
        text = ""
        for path in self.folder.glob("turn*.log"):
            text += path.read_text(errors="replace")
        return text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
