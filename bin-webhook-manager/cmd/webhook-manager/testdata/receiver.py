#!/usr/bin/python3
"""A customer's webhook endpoint, for the webhook manager's end-to-end tests.

Written the way a customer would write it with Flask: it verifies X-VoIPBIN-Signature with
hmac.compare_digest over the raw request body, and verifies the Standard Webhooks headers
(webhook-id, webhook-timestamp, webhook-signature) as the Standard Webhooks specification defines
them: the key is the base64 after "whsec_", the signed content is "id.timestamp.body", the header
holds space-separated "v1,<base64>" signatures, and a timestamp more than 5 minutes away is
refused. A delivery that fails either check is answered 401.

It listens on a random loopback port and prints {"port": N} on its first line. The test drives it:
  POST /_config   {"secret": "whsec_…", "fail_first": 3, "fail_status": 500, "delay": 0.2}
  GET  /_received every request to /hook so far, in arrival order, with what it answered
"""
import base64
import hashlib
import hmac
import json
import logging
import sys
import threading
import time

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

TOLERANCE_SECONDS = 5 * 60

app = Flask(__name__)
lock = threading.Lock()
state = {"secret": "", "fail_first": 0, "fail_status": 500, "delay": 0.0}
received = []
attempts_of = {}  # event_id -> requests so far


def verify_voipbin(secret: str, body: bytes, signature: str) -> bool:
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature or "")


def verify_standard(secret: str, body: bytes, headers) -> bool:
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp and signatures):
        return False
    try:
        if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            return False
    except ValueError:
        return False
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for sig in signatures.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value):
            return True
    return False


@app.post("/_config")
def configure():
    with lock:
        state.update(request.get_json())
    return jsonify(ok=True)


@app.get("/_received")
def list_received():
    with lock:
        return jsonify(received)


@app.route("/hook", methods=["POST", "PUT", "PATCH"])
def hook():
    body = request.get_data()  # the raw bytes, exactly as signed
    with lock:
        secret, fail_first, fail_status, delay = state["secret"], state["fail_first"], state["fail_status"], state["delay"]
    ok_voipbin = verify_voipbin(secret, body, request.headers.get("X-VoIPBIN-Signature", ""))
    ok_standard = verify_standard(secret, body, request.headers)
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = {}
    event_id = envelope.get("event_id", "")
    with lock:
        attempts_of[event_id] = attempts_of.get(event_id, 0) + 1
        attempt = attempts_of[event_id]
        if not (ok_voipbin and ok_standard):
            status = 401
        elif attempt <= fail_first:
            status = fail_status
        else:
            status = 200
        received.append({
            "event_id": event_id,
            "event_type": envelope.get("event_type", ""),
            "sequence": envelope.get("sequence", 0),
            "resource_id": envelope.get("resource_id", ""),
            "call_id": (envelope.get("data") or {}).get("call_id", ""),
            "webhook_id": request.headers.get("webhook-id", ""),
            "method": request.method,
            "verified_voipbin": ok_voipbin,
            "verified_standard": ok_standard,
            "attempt": attempt,
            "status": status,
            "at": time.time(),
            "body": body.decode("utf-8", "replace"),
            "headers": {k: request.headers.get(k, "") for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
        })
    if delay:
        time.sleep(delay)
    return ("ok" if status == 200 else "no", status)


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(json.dumps({"port": server.server_port}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
