#!/usr/bin/env bash
# Benchmark of the rtc manager's SIP side against sipp, with sipp↔sipp as the baseline.
#
#   bin-rtc-manager/bench/run.sh            RATES="50 100 200" DURATION=10 ROUNDS=3 by default
#
# For each rate (calls/s), ROUNDS times, for DURATION seconds:
#   baseline  sipp -sn uac dials sipp -sn uas (INVITE, 180, 200, ACK, BYE) on loopback;
#             the rate passes when sipp's exit code says no call failed.
#   rtc       bench/dialload dials through RPC (bin-manager.rtc.request) → rtc-manager (sipgo) →
#             sipp answering with testdata/sipp/uas_answer_bye.xml (180, 200, ACK, then its BYE);
#             the rate passes when every call was answered and ended by the remote BYE with 200,
#             as seen on rtc.events.
# The rtc manager runs as its own process against the local Redis and a RabbitMQ virtual host of
# its own (deleted at the end). Prints one line per run and the highest rate with zero failures
# in every round for each side. LOG_DIR=dir keeps the rtc manager's log (RTC_LOG_LEVEL, warn).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
[[ -x /usr/local/go/bin/go ]] && PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=go1.27.3 # the release the go.mod files name; fetched once when older is installed
: "${RATES:=50 100 200}"
: "${DURATION:=10}"
: "${ROUNDS:=3}"
: "${REDIS_ADDRESS:=127.0.0.1:6379}"
: "${RABBIT_BASE:=amqp://guest:guest@127.0.0.1:5672}"
command -v sipp >/dev/null || { echo "bench: sipp not found (deploy/local/services.sh sipp)" >&2; exit 1; }

tmp=$(mktemp -d)
vhost="bench_rtc_$$"
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
	if [[ -n ${LOG_DIR:-} ]]; then cp "$tmp"/*.log "$LOG_DIR"/ 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "==> building"
(cd "$root" && go build -o "$tmp/" ./bin-rtc-manager/cmd/rtc-manager ./bin-rtc-manager/bench/dialload)

baseline() { # rate: 0 when sipp reports no failed call
	local rate=$1 uas uac
	uas=$(free_port)
	uac=$(free_port)
	local upid
	# -bg forks and prints "Background mode - PID=[n]": the pid of the sipp we started.
	# (its exit code is 99 then).
	(cd "$tmp" && sipp -sn uas -i 127.0.0.1 -p "$uas" -mp "$(free_port)" -nostdin -bg >"$tmp/uas.out" 2>&1) || true
	upid=$(grep -o 'PID=\[[0-9]*' "$tmp/uas.out" | grep -o '[0-9]*$') || { echo "no sipp uas: $(cat "$tmp/uas.out")" >&2; return 1; }
	local start=$SECONDS rc=0
	(cd "$tmp" && sipp -sn uac "127.0.0.1:$uas" -i 127.0.0.1 -p "$uac" -mp "$(free_port)" -r "$rate" -m $((rate * DURATION)) -d 0 \
		-nostdin -timeout $((DURATION + 60))s >"$tmp/uac.out" 2>&1) || rc=$?
	kill "$upid" 2>/dev/null || true
	local failed
	failed=$(grep -E '^\s+Failed call' "$tmp/uac.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
	printf '  baseline rate=%-4s calls=%-6s failed=%-4s exit=%s took=%ss\n' "$rate" $((rate * DURATION)) "${failed:-?}" "$rc" $((SECONDS - start))
	return "$rc"
}

echo "==> rabbitmq vhost $vhost"
rabbitmqctl -q add_vhost "$vhost"
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*'
sip=$(free_port)
admin=$(free_port)
RABBITMQ_ADDRESS="$RABBIT_BASE/$vhost" REDIS_ADDRESS="$REDIS_ADDRESS" NODE_ID="bench-$$" SIP_LISTEN_ADDRESS="127.0.0.1:$sip" \
	ADMIN_ADDRESS="127.0.0.1:$admin" LOG_LEVEL="${RTC_LOG_LEVEL:-warn}" RTC_TEL_TRUNK_URI='sip:{number}@127.0.0.1:9' \
	"$tmp/rtc-manager" >"$tmp/rtc.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
	sleep 0.2
done
curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "rtc-manager not ready"; cat "$tmp/rtc.log"; exit 1; }

rtc() { # rate
	local rate=$1 port rc=0
	port=$(free_port)
	(cd "$tmp" && exec sipp -sf "$root/bin-rtc-manager/testdata/sipp/uas_answer_bye.xml" -d 0 -i 127.0.0.1 -p "$port" \
		-mp "$(free_port)" -nostdin >/dev/null 2>&1) &
	local spid=$!
	sleep 0.5
	local out
	out=$("$tmp/dialload" -rabbit "$RABBIT_BASE/$vhost" -target "bench@127.0.0.1:$port" -rate "$rate" -duration "${DURATION}s") || rc=$?
	kill "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	printf '  rtc      rate=%-4s %s\n' "$rate" "$out"
	return "$rc"
}

declare -A ok_base=() ok_rtc=()
for rate in $RATES; do
	ok_base[$rate]=1
	ok_rtc[$rate]=1
	for round in $(seq "$ROUNDS"); do
		echo "==> rate $rate, round $round"
		baseline "$rate" || ok_base[$rate]=0
		rtc "$rate" || ok_rtc[$rate]=0
	done
done

best() { # name of assoc array
	local -n arr=$1
	local r b=0
	for r in $RATES; do
		if [[ ${arr[$r]} == 1 ]] && ((r > b)); then b=$r; fi
	done
	echo "$b"
}
echo
echo "highest rate with zero failures in all $ROUNDS rounds of ${DURATION}s:"
echo "  sipp -> sipp (baseline):        $(best ok_base) calls/s"
echo "  RPC -> rtc-manager -> sipp:      $(best ok_rtc) calls/s"
