"""spark_jobs/standalone.py without Spark: waiting for workers survives the master UI's start-up."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from spark_jobs.standalone import wait_for_workers


def test_wait_for_workers_retries_while_the_ui_serves_html_then_sees_the_workers(tmp_path):
    answers = iter(["<!DOCTYPE html><html></html>", json.dumps({"aliveworkers": 1}), json.dumps({"aliveworkers": 2})])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            body = next(answers, json.dumps({"aliveworkers": 2})).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_for_workers(server.server_address[1], 2, [], tmp_path, timeout_s=30)  # the HTML page is not an error
        assert next(answers, None) is None  # it asked until two workers were alive
    finally:
        server.shutdown()
