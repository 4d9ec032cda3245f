#!/usr/bin/env python3
"""The Kubernetes Python client's own WebSocket stream code (Debian python3-kubernetes, kubernetes.stream.ws_client)
used on crius' streaming URLs directly, as the API server would hand them to it: exec with stdin, stdout, stderr and
the exit code, and port-forward of an HTTP GET. Shares nothing with crius or with the Rust test client.

Usage: k8s_ws_client.py <exec url> <exec url> <exec url> <portforward url> <port>
The first two exec URLs run a command that reads a line and exits 5: stdin goes to the first as a str (a text
frame, as in the client's documented use), to the second as bytes (a binary frame). The third runs `echo fine`.
Prints one JSON object on stdout, a key per part; a part that fails holds {"exception": <traceback>} instead.
"""

import hashlib
import json
import sys
import time
import traceback

from kubernetes.client import Configuration
from kubernetes.stream.ws_client import PortForward, WSClient, create_websocket, get_websocket_url

# Per part; well inside the minute the streaming URLs stay valid for, all parts together.
TIMEOUT = 12


def exec_session(configuration, url, stdin=None):
    # headers=None: the client asks for its default subprotocol (v4.channel.k8s.io).
    client = WSClient(configuration, get_websocket_url(url), headers=None, capture_all=True)
    if stdin is not None:
        # A str goes out as a text frame, bytes as a binary one.
        client.write_stdin(stdin)
    client.run_forever(timeout=TIMEOUT)
    if client.is_open():
        client.close()
        raise RuntimeError("exec session %s still open after %d s" % (url, TIMEOUT))
    stdout = client.read_stdout()
    stderr = client.read_stderr()
    return {"stdout": stdout, "stderr": stderr, "returncode": client.returncode}


def http_complete(data):
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in data[:end].decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(data) >= end + 4 + int(value.strip())
    return False


def forward_get(configuration, url, port):
    websocket = create_websocket(configuration, get_websocket_url(url), None)
    forward = PortForward(websocket, [port])
    sock = forward.socket(port)
    sock.settimeout(TIMEOUT)
    sock.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")
    data = b""
    deadline = time.time() + TIMEOUT
    while not http_complete(data):
        if time.time() > deadline:
            raise RuntimeError("no whole HTTP response within %d s: %r" % (TIMEOUT, data[:300]))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise RuntimeError("no HTTP response through the forward: %r (error %r)" % (data[:300], forward.error(port)))
    body = data[end + 4:]
    result = {
        "status_line": data[:end].decode("latin-1").split("\r\n")[0],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "error": forward.error(port),
    }
    forward.close()
    return result


def attempt(part, *args, **kwargs):
    try:
        return part(*args, **kwargs)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        return {"exception": traceback.format_exc()}


def main():
    text_stdin, bytes_stdin, ok, forward, port = sys.argv[1:6]
    configuration = Configuration()
    seen = {
        "exec": attempt(exec_session, configuration, text_stdin, stdin="hello\n"),
        "exec_bytes": attempt(exec_session, configuration, bytes_stdin, stdin=b"hello\n"),
        "exec_ok": attempt(exec_session, configuration, ok),
        "http": attempt(forward_get, configuration, forward, int(port)),
    }
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
