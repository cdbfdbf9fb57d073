"""A tiny MJPEG-over-HTTP camera for tests: `python mjpeg_server.py PORT IMAGE_DIR [FPS]`.

Serves the folder's JPEGs forever as multipart/x-mixed-replace, like many IP cameras do.
"""

from __future__ import annotations

import http.server
import socketserver
import sys
import time
from pathlib import Path

PORT, FOLDER = int(sys.argv[1]), Path(sys.argv[2])
PERIOD = 1.0 / float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
FRAMES = [p.read_bytes() for p in sorted(FOLDER.glob("*.jpg"))]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        try:
            while True:
                data = FRAMES[i % len(FRAMES)]
                i += 1
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                self.wfile.write(head.encode() + data + b"\r\n")
                time.sleep(PERIOD)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", PORT), Handler).serve_forever()
