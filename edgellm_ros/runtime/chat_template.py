"""Chat templates from model files, rendered with bounds on time, output and memory.

A chat template is code from the model folder (``tokenizer_config.json``,
``chat_template.jinja``, GGUF ``tokenizer.chat_template``). jinja2's
immutable sandbox keeps it from touching Python objects, but not from
looping ``range(100000)`` inside ``range(100000)`` or building a string of
gigabytes. So templates render in a worker process of their own
(:class:`TemplateRenderer`), started once per tokenizer and reused:

* time: each render must answer within ``timeout_s`` (default
  :data:`RENDER_TIMEOUT_S`); past it the worker is killed (SIGKILL, which
  stops any loop, Python or C) and started again for the next request;
* output: the worker renders with ``Template.generate()`` and stops once
  the text passes :func:`output_limit` characters (1 MiB plus twice the
  characters of the messages: what a template adds around them is small);
* memory: the worker's address space is capped (``RLIMIT_AS``,
  :data:`MEMORY_BYTES` above its size after start-up), so a string bomb
  inside one operation (``'x' * 10**10``) ends in a MemoryError there,
  never in the node.

A render that exceeds a bound raises :class:`TemplateLimitExceeded` (an
``InvalidRequest``: the node answers INVALID_REQUEST with the reason); a
template that fails on its own raises InvalidRequest with jinja's message.
Measured cost (docs/RUNTIME.md, "Hostile files"): a process start per
tokenizer and a pipe round trip per render.

Run as ``python -m edgellm_ros.runtime.chat_template`` it is the worker:
one JSON request per line on stdin, one JSON answer per line on stdout; it
imports only the standard library and jinja2.
"""

from __future__ import annotations

import datetime
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional

#: Seconds one render may take before the worker is killed.
RENDER_TIMEOUT_S = 2.0
#: Seconds the worker may take to start (import jinja2, compile the template).
START_TIMEOUT_S = 30.0
#: Bytes of address space the worker may grow by after start-up.
MEMORY_BYTES = 512 * 2**20
#: Characters any render may produce on top of twice its messages' characters.
BASE_OUTPUT_CHARS = 2**20


def output_limit(messages: Any) -> int:
    """Most characters a render of ``messages`` may produce: 1 MiB + 2 x their JSON size."""
    return BASE_OUTPUT_CHARS + 2 * len(json.dumps(messages, ensure_ascii=False))


# -- the worker side (stdlib + jinja2 only) -----------------------------------------


def compile_template(source: str) -> Any:
    """Compile a chat template in jinja2's immutable sandbox, as transformers does."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, **kw: Any) -> str:  # jinja's own escapes HTML
        return json.dumps(x, ensure_ascii=ensure_ascii, **kw)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def render_bounded(template: Any, context: Dict[str, Any], limit: int) -> Dict[str, Any]:
    """Render streaming, stopping past ``limit`` characters; an answer for the wire."""
    import jinja2

    out: List[str] = []
    n = 0
    try:
        for chunk in template.generate(**context):
            n += len(chunk)
            if n > limit:
                return {"limit": f"the chat template's output passed {limit} characters; rendering stopped"}
            out.append(chunk)
    except MemoryError:
        return {"limit": f"the chat template needed more than {MEMORY_BYTES // 2**20} MiB of memory; "
                         "rendering stopped"}
    except RecursionError:
        return {"limit": "the chat template recursed too deeply; rendering stopped"}
    except jinja2.TemplateError as exc:
        return {"error": f"chat template failed: {exc}"}
    except Exception as exc:
        return {"error": f"chat template failed ({type(exc).__name__}: {exc})"}
    return {"text": "".join(out)}


def _cap_memory() -> None:
    try:
        import resource
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        now = pages * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (now + MEMORY_BYTES, now + MEMORY_BYTES))
    except (ImportError, OSError, ValueError):   # not Linux: time and output bounds still hold
        pass


def _exit_with_parent(parent: int) -> None:
    """End this worker when its parent is gone, even in the middle of a render."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def serve() -> None:
    """The worker's loop: first line {"template"}, then {"context", "limit"} per render."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when this process ends
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def answer(obj: Dict[str, Any]) -> None:
        stdout.write(json.dumps(obj).encode() + b"\n")
        stdout.flush()

    try:
        template = compile_template(json.loads(stdin.readline())["template"])
    except Exception as exc:
        answer({"error": f"chat template does not compile ({type(exc).__name__}: {exc})"})
        return
    _cap_memory()
    answer({"ready": True})
    for line in stdin:
        try:
            req = json.loads(line)
            res = render_bounded(template, req["context"], int(req["limit"]))
        except MemoryError:
            res = {"limit": "the chat template's input exhausted the renderer's memory"}
        answer(res)


# -- the node side ------------------------------------------------------------------


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


class TemplateRenderer:
    """Renders one chat template in a worker process with time, output and memory bounds.

    Thread-safe (renders are serialized). :meth:`close` ends the worker;
    a collected renderer ends it too.
    """

    def __init__(self, source: str, timeout_s: float = RENDER_TIMEOUT_S):
        """Keep ``source``; the worker starts on the first render."""
        self.source = source
        self.timeout_s = timeout_s
        self._proc: Optional["subprocess.Popen[bytes]"] = None
        self._lock = threading.Lock()
        self._finalizer: Optional[weakref.finalize] = None

    def _start(self) -> "subprocess.Popen[bytes]":
        from ..errors import ModelLoadError

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen([sys.executable, "-m", "edgellm_ros.runtime.chat_template"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True, close_fds=True)
        self._finalizer = weakref.finalize(self, _stop, proc)
        try:
            self._send(proc, {"template": self.source})
            ans = self._receive(proc, START_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self._finalizer()
            raise ModelLoadError(f"the chat template renderer did not start ({exc})") from exc
        if not ans or "ready" not in ans:
            self._finalizer()
            raise ModelLoadError((ans or {}).get("error") or "the chat template renderer did not start")
        return proc

    @staticmethod
    def _send(proc: "subprocess.Popen[bytes]", obj: Dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(obj).encode() + b"\n")
        proc.stdin.flush()

    @staticmethod
    def _receive(proc: "subprocess.Popen[bytes]", timeout_s: float) -> Optional[Dict[str, Any]]:
        """One answer line; None when the worker died; TimeoutError past ``timeout_s``."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = bytearray()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            buf += chunk
        return json.loads(bytes(buf))

    def render(self, context: Dict[str, Any]) -> str:
        """The template rendered with ``context``; InvalidRequest (or TemplateLimitExceeded) on failure."""
        from ..errors import InvalidRequest, TemplateLimitExceeded

        limit = output_limit(context.get("messages"))
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            try:
                self._send(proc, {"context": context, "limit": limit})
                ans = self._receive(proc, self.timeout_s)
            except TimeoutError:
                self._kill()
                raise TemplateLimitExceeded(
                    f"the chat template did not finish within {self.timeout_s:g} s; rendering stopped "
                    "(the template loops too long)") from None
            except (OSError, ValueError) as exc:
                self._kill()
                raise InvalidRequest(f"the chat template renderer failed ({exc})") from exc
            if ans is None:
                code = proc.wait()
                self._kill()
                raise TemplateLimitExceeded(f"the chat template renderer ended (exit code {code}) "
                                            "while rendering; rendering stopped")
        if "text" in ans:
            return str(ans["text"])
        if "limit" in ans:
            raise TemplateLimitExceeded(str(ans["limit"]))
        raise InvalidRequest(str(ans.get("error")))

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None

    def close(self) -> None:
        """End the worker process (a later render starts a new one)."""
        with self._lock:
            self._kill()


if __name__ == "__main__":
    serve()
