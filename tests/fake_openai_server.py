"""A stand-in for an OpenAI-compatible judge on loopback, for tests (no network).

It answers ``POST /v1/chat/completions`` by reading Response A and Response B out of the judge
prompt and preferring the shorter one ("[[C]]" when equally long), so its verdicts do not depend
on the order: a consistent judge. ``fail_first`` makes the first N requests answer HTTP 500 and
``garbage_first`` makes the next N answer without a verdict, to exercise retries.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESPONSES = re.compile(r"\[Response A\]\n(.*?)\n\n\[Response B\]\n(.*?)\n\n[^\n]*$", re.S)


class FakeJudgeServer:
    def __init__(self, *, fail_first: int = 0, garbage_first: int = 0):
        self.fail_first, self.garbage_first = fail_first, garbage_first
        self.requests: list[dict] = []  # {"path", "authorization", "body"}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "authorization": self.headers.get("Authorization")})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if server.fail_first > 0:
                    server.fail_first -= 1
                    return self._send(500, {"error": "overloaded"})
                if server.garbage_first > 0:
                    server.garbage_first -= 1
                    return self._reply("Both are fine, I think A, or maybe [[B]] or [[A]].")
                a, b = RESPONSES.search(body["messages"][-1]["content"]).groups()
                verdict = "[[A]]" if len(a) < len(b) else "[[B]]" if len(b) < len(a) else "[[C]]"
                return self._reply(f"The shorter answer is better.\n{verdict}")

            def _reply(self, text: str):
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                     "content": text}}]})

            def _send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
