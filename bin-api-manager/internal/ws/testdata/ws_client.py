#!/usr/bin/python3
"""A voipbin WebSocket subscriber built on the third-party `websocket-client` library
(Debian: python3-websocket), used by the tests to prove the endpoint speaks plain WebSocket.

It connects to GET /v1.0/ws, sends one subscribe frame, and prints every frame it receives as
one JSON line on stdout, flushing each line:
  - the server's answer to the subscribe frame: {"type":"ack","id":"sub-1"} or
    {"type":"error","id":"sub-1","reason":"PERMISSION_DENIED","message":"..."} (only when the
    frame carried an id, which it does unless --no-id);
  - each event envelope, exactly as received;
  - when the server closes the socket: {"type":"close","code":1008,"reason":"PERMISSION_DENIED: ..."};
  - when the upgrade is refused: {"type":"http_error","status":401}.
Diagnostics go to stderr.

Usage:
  ws_client.py --url ws://127.0.0.1:8080/v1.0/ws --token JWT \\
      --topic customer_id:<id>:call:* [--topic ...] [--count 5] [--timeout 30] [--no-id]
Credentials: --token (?token=), --accesskey (?accesskey=) or --bearer (Authorization header).

Exit status: 0 once --count events arrived (with --count 0: once the subscription is
acknowledged, or at once with --no-id); 1 on timeout; 2 when the server closed the socket;
3 when the subscription was refused by an error frame; 4 when the upgrade was refused or the
connection failed; 64 on bad arguments.
"""

import argparse
import json
import sys
import time
import urllib.parse

import websocket


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description="voipbin WebSocket subscriber (prints frames as JSON lines)")
    p.add_argument("--url", required=True, help="ws:// or wss:// URL of /v1.0/ws")
    cred = p.add_mutually_exclusive_group()
    cred.add_argument("--token", help="JWT or access key sent as ?token=")
    cred.add_argument("--accesskey", help="access key sent as ?accesskey=")
    cred.add_argument("--bearer", help="credential sent as Authorization: Bearer")
    p.add_argument("--topic", action="append", required=True, help="topic to subscribe (repeatable)")
    p.add_argument("--count", type=int, default=0, help="event frames to wait for before exiting 0")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up (exit 1)")
    p.add_argument("--no-id", action="store_true", help="subscribe without an id (no ack; refusal closes the socket)")
    args = p.parse_args()
    if args.count < 0 or args.timeout <= 0:
        p.error("--count must be >= 0 and --timeout > 0")

    url = args.url
    query = {}
    if args.token:
        query["token"] = args.token
    if args.accesskey:
        query["accesskey"] = args.accesskey
    if query:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
    headers = ["Authorization: Bearer " + args.bearer] if args.bearer else []

    deadline = time.monotonic() + args.timeout
    try:
        ws = websocket.create_connection(url, timeout=args.timeout, header=headers)
    except websocket.WebSocketBadStatusException as e:
        emit({"type": "http_error", "status": e.status_code})
        return 4
    except (OSError, websocket.WebSocketException) as e:
        print("connect failed: %s" % e, file=sys.stderr)
        return 4

    frame = {"type": "subscribe", "topics": args.topic}
    if not args.no_id:
        frame["id"] = "sub-1"
    ws.send(json.dumps(frame))
    acked = args.no_id
    if acked and args.count == 0:
        ws.close()
        return 0

    events = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print("timed out after %.1fs with %d of %d events" % (args.timeout, events, args.count), file=sys.stderr)
            return 1
        ws.settimeout(left)
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            continue
        except (OSError, websocket.WebSocketException) as e:
            print("connection lost: %s" % e, file=sys.stderr)
            emit({"type": "close", "code": 1006, "reason": ""})
            return 2
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            payload = data.data if hasattr(data, "data") else data
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            emit({"type": "close", "code": code, "reason": payload[2:].decode("utf-8", "replace")})
            return 2
        try:
            msg = json.loads(data)
        except ValueError:
            print("frame is not JSON: %r" % data[:200], file=sys.stderr)
            return 2
        emit(msg)
        if "event_type" in msg:
            events += 1
        elif msg.get("type") == "error":
            ws.close()
            return 3
        elif msg.get("type") == "ack":
            acked = True
        if acked and events >= args.count:
            ws.close()
            return 0


if __name__ == "__main__":
    sys.exit(main())
