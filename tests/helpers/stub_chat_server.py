"""A local stand-in for an OpenAI-compatible chat server (vLLM serving UnifiedReward), for tests.

Listens on 127.0.0.1 at a free port, in a thread. Each ``POST`` is answered by the next queued
action, or - when the queue is empty - with the canned answer for the request's caption (the text
inside ``Text Caption: [...]``). Actions: ``("answer", text)``, ``("status", code)``,
``("hang",)`` (sends nothing until the server stops) and ``("garbage",)`` (HTTP 200, not JSON).
Every request body is recorded, and the largest number of requests in flight at once is tracked.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CAPTION = re.compile(r"Text Caption: \[(.*)\]\s*$", re.S)


class StubChatServer:
    """Context manager: ``with StubChatServer(answers) as stub: stub.base_url ...``."""

    def __init__(self, answers: dict[str, str] | None = None, default: str = "Final Score: 1", delay_s: float = 0.0):
        self.answers = dict(answers or {})
        self.default = default
        self.delay_s = delay_s
        self.queue: deque[tuple] = deque()
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def then(self, *actions: tuple) -> "StubChatServer":
        """Queue actions for the next requests, in order."""
        self.queue.extend(actions)
        return self

    def __enter__(self) -> "StubChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _next_action(self, body: dict) -> tuple:
        with self.lock:
            self.requests.append(body)
            if self.queue:
                return self.queue.popleft()
        text = body["messages"][0]["content"][-1]["text"]
        match = CAPTION.search(text)
        caption = match.group(1) if match else ""
        return ("answer", self.answers.get(caption, self.default))

    def _handler_class(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server API)
                with stub.lock:
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    stub.paths.append(self.path)
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    action = stub._next_action(body)
                    if stub.delay_s:
                        time.sleep(stub.delay_s)
                    if action[0] == "hang":
                        stub.release.wait(timeout=30)
                        self.close_connection = True
                        return
                    if action[0] == "status":
                        self._send(action[1], json.dumps({"error": {"message": "stub error"}}).encode())
                    elif action[0] == "garbage":
                        self._send(200, b"<html>not json</html>")
                    else:
                        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": action[1]}}]}
                        self._send(200, json.dumps(reply).encode())
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        return Handler
