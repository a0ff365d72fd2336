"""headers_probe: a plain (standard library only) processor that writes the HTTP headers of
its ``POST /api/process`` into ``headers.json`` in its output, to see what boride sends a
component (the W3C ``traceparent``). ``config`` ``{"fail": "why"}``: answer HTTP 500 with
that text instead. Health is fine. Port: argv[1], else 5551."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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
        self._send(200, b'{"Message": "OK", "Status": "OK"}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        config = request.get("config") or {}
        if config.get("fail"):
            self._send(500, json.dumps({"error": config["fail"]}).encode())
            return
        out = Path(request.get("writeDir") or request.get("directory"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "headers.json").write_text(json.dumps({k.lower(): v for k, v in
                                                      self.headers.items()}))
        self._send(200, json.dumps({"outputDir": str(out)}).encode())


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5551
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
