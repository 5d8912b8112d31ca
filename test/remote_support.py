"""Helpers of the remote backend's tests: a real OpenAI-compatible server and a fault proxy.

- :class:`LlamaServer`: llama.cpp's server (``python -m llama_cpp.server`` of
  llama-cpp-python, test-only, in .venv-remote-server/ made by
  scripts/remote_server_setup.sh) on the embedded GGUF, started and stopped on
  a free localhost port. It serves the model as ``smollm2`` and, for the LoRA
  mapping, the same file again as ``smollm2-radiology``.
- :class:`FaultProxy`: a small HTTP proxy in front of it (stdlib http.server,
  localhost only) that records every request body and can answer 429/503,
  stall, pace, cut a stream or send garbage in it, and tells when the client
  closed a stream before its end.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

from support import REPO

SERVER_VENV = os.path.join(REPO, ".venv-remote-server")
MODEL = "smollm2"
LORA_MODEL = "smollm2-radiology"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_gguf() -> str:
    from edgellm_ros.loaders import default_model_path
    return default_model_path()


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on the embedded GGUF (a subprocess)."""

    def __init__(self, port: int = 0, log_path: str = ""):
        self.port = port or free_port()
        self.log_path = log_path or os.path.join(REPO, "build", f"llama_server_{self.port}.log")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        python = os.path.join(SERVER_VENV, "bin", "python")
        if not os.path.exists(python):
            raise RuntimeError(f"{python} is missing: bash scripts/setup.sh builds the test server "
                               "(scripts/remote_server_setup.sh)")
        gguf = embedded_gguf()
        config = {"host": "127.0.0.1", "port": self.port, "models": [
            # one thread: llama.cpp's threads spin at barriers, which a loaded 2-core machine
            # turns into seconds per token
            {"model": gguf, "model_alias": alias, "n_ctx": 2048, "n_threads": 1, "n_threads_batch": 1,
             "n_batch": 256, "verbose": False} for alias in (MODEL, LORA_MODEL)]}
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        cfg_path = self.log_path + ".json"
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--config_file", cfg_path],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; "
                                   f"log: {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


class _QuietServer(ThreadingHTTPServer):
    """Connections the tests drop on purpose (cancel, timeouts) print no tracebacks."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FaultProxy:
    """An HTTP proxy to ``upstream`` (host, port) that injects faults; see the module docstring.

    Set before a request: ``statuses`` (HTTP statuses to answer the next
    POSTs with, one each, e.g. [503, 503]; ``retry_after`` goes with them),
    ``stall_s`` (wait before answering a POST), ``pace_s`` (between events),
    ``cut_after`` / ``garbage_after`` (events forwarded before the connection
    is dropped / a non-JSON event is sent).
    """

    def __init__(self, upstream: Tuple[str, int], port: int = 0):
        self.upstream = upstream
        self.bodies: List[Dict[str, Any]] = []     # every POST body, in order
        self.attempts = 0                           # POSTs received
        self.client_closed = threading.Event()      # a client dropped a stream before its end
        self.events_sent = 0                        # SSE events of the last stream forwarded
        self.streamed = ""                          # the content deltas of the last stream
        self.reset()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy._forward(self, body)

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.statuses: List[int] = []
        self.retry_after = ""
        self.stall_s = 0.0
        self.pace_s = 0.0
        self.cut_after = -1
        self.garbage_after = -1
        self.client_closed.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, h: BaseHTTPRequestHandler, body: Optional[bytes]) -> None:
        if body is not None:
            self.attempts += 1
            try:
                self.bodies.append(json.loads(body))
            except ValueError:
                self.bodies.append({"unparsed": body.decode("utf-8", "replace")})
            if self.statuses:
                status = self.statuses.pop(0)
                msg = json.dumps({"error": {"message": f"injected {status}"}}).encode()
                h.send_response(status)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(msg)))
                if self.retry_after:
                    h.send_header("Retry-After", self.retry_after)
                h.end_headers()
                h.wfile.write(msg)
                return
            if self.stall_s:
                time.sleep(self.stall_s)
        conn = http.client.HTTPConnection(*self.upstream, timeout=600)
        try:
            headers = {"Content-Type": "application/json"}
            conn.request(h.command, h.path, body=body, headers=headers)
            up = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            h.send_error(502, f"upstream: {exc}")
            return
        h.send_response(up.status)
        for k, v in up.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                h.send_header(k, v)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        self.events_sent = 0
        self.streamed = ""
        try:
            for event in self._events(up):
                if self.events_sent == self.cut_after:
                    h.wfile.flush()
                    h.connection.shutdown(socket.SHUT_RDWR)   # no closing chunk: a broken stream
                    h.close_connection = True
                    return
                if self.events_sent == self.garbage_after:
                    event = b"data: {this is not json\n\n"
                if self.pace_s and event.startswith(b"data:"):
                    time.sleep(self.pace_s)
                h.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                h.wfile.flush()
                self.events_sent += 1
                self.streamed += _content(event)
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.client_closed.set()
            h.close_connection = True
        except (OSError, http.client.HTTPException):   # upstream died mid-stream: drop the client's too
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
        finally:
            conn.close()

    @staticmethod
    def _events(up: http.client.HTTPResponse):
        """The upstream body as SSE events (blank-line separated); a JSON body as one piece.

        A stream that ends before ``data: [DONE]`` (the server died) raises IncompleteRead,
        so the client's stream is dropped too, as the server's own connection would be.
        """
        if "text/event-stream" not in (up.getheader("Content-Type") or ""):
            yield up.read()
            return
        event = b""
        while True:
            line = up.readline()
            if not line:
                if event.strip():
                    yield event
                raise http.client.IncompleteRead(b"")
            event += line
            if line in (b"\n", b"\r\n"):
                if event.strip():
                    yield event
                if event.startswith(b"data: [DONE]"):
                    return
                event = b""


def _content(event: bytes) -> str:
    """The content delta of one SSE chat-completion chunk ("" for anything else)."""
    data = event.decode("utf-8", "replace").strip()
    if not data.startswith("data:"):
        return ""
    try:
        choices = json.loads(data[5:]).get("choices") or [{}]
    except ValueError:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""
