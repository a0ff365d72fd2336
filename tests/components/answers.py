"""answers: a plain (standard library only) component that answers each call as its config
says, for boride's checks of what components answer. Health is fine. Port: argv[1], else
each kind's (5551, 5552 and 5553 at once). ``--endless-health`` after the port: ``GET /`` answers
200 with a body that never ends.

``config`` (an object):
  ``path``: str          ``POST /api/resolve`` answers for this path (default: the asked one),
                         the versions joined with ``+``
  ``huge_mb``: int       answer a JSON body of that many MiB (valid JSON: the answer and a
                         padding field), written in chunks (this process never holds it)
  ``announce``: bool     with ``huge_mb``: send its ``Content-Length`` (default: chunked)
  ``allocate_mb``: int   first take that much memory, 8 MiB at a time; a MemoryError is
                         printed and answered with HTTP 500 (as an SDK's server does)
  ``oom_exit``: bool     with ``allocate_mb``: after a MemoryError, exit (code 1) instead
"""

import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024
MIB = 1024 * 1024
held = []  # memory taken (kept: it is the point)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if ENDLESS_HEALTH:  # 200, then a body that never ends
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            block = b"x" * CHUNK
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            except (BrokenPipeError, ConnectionResetError):
                return
        self._send(200, b'{"Message": "OK", "Status": "OK"}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        config = request.get("config") or {}
        try:
            for _ in range(int(config.get("allocate_mb", 0)) // 8):
                held.append(b"\1" * (8 * MIB))  # written: the pages are really taken
        except MemoryError:
            held.clear()
            traceback.print_exc()
            sys.stderr.flush()
            if config.get("oom_exit"):
                os._exit(1)
            self._send(500, b'{"error": "MemoryError"}')
            return
        if self.path == "/api/resolve":
            files = request["files"]
            answer = {"path": config.get("path", files[0]["path"]),
                      "content": "+".join(f["content"] for f in files)}
        else:
            answer = {"outputDir": request.get("writeDir") or request.get("directory")}
        if not config.get("huge_mb"):
            self._send(200, json.dumps(answer).encode())
            return
        self._huge(answer, int(config["huge_mb"]) * MIB, bool(config.get("announce")))

    def _huge(self, answer: dict, size: int, announce: bool) -> None:
        head = json.dumps(answer)[:-1].encode() + b', "padding": "'
        tail = b'"}'
        pad = size - len(head) - len(tail)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if announce:
            self.send_header("content-length", str(size))
        else:
            self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def write(data: bytes) -> None:
            if announce:
                self.wfile.write(data)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        try:
            write(head)
            block = b"x" * CHUNK
            while pad > 0:
                write(block[:pad])
                pad -= CHUNK
            write(tail)
            if not announce:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            print("answers: the client closed the connection mid-answer", file=sys.stderr,
                  flush=True)


ENDLESS_HEALTH = "--endless-health" in sys.argv[2:]

if __name__ == "__main__":
    ports = [int(sys.argv[1])] if len(sys.argv) > 1 else [5551, 5552, 5553]
    servers = [ThreadingHTTPServer(("0.0.0.0", p), Handler) for p in ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()
