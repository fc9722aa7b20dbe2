"""A private nginx with the RTMP module (Debian's nginx + libnginx-mod-rtmp) on a free port,
started and stopped by the test that needs a real RTMP server."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def available() -> bool:
    return MODULE.exists() and Path(NGINX).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtmpServer:
    """nginx -c DIR/nginx.conf: `start`, `stop` (SIGTERM), `start` again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        (folder / "nginx.conf").write_text(
            f"load_module {MODULE};\n"
            "daemon off;\n"
            f"pid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log info;\n"
            "events { worker_connections 64; }\n"
            f"rtmp {{ server {{ listen 127.0.0.1:{self.port}; "
            "application live { live on; record off; } } }\n")

    def url(self, name: str = "avatar") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen([NGINX, "-c", str(self.folder / "nginx.conf"), "-p", str(self.folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}; see {self.folder}/error.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("nginx did not listen in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
