#!/usr/bin/env bash
# Runs the whole stack on this machine: the five managers and the SIP carrier simulator, with their
# logs interleaved on stdout, each line prefixed by the service's name. Ctrl-C stops everything.
#
#   run.sh [run]     services.sh ensure, build, migrate, start all, wait until ready (make run)
#   run.sh build     build every binary into ./bin
#   run.sh migrate   services.sh ensure, build, apply every service's migrations (make migrate)
#
# Every setting comes from the environment, with the defaults in env.sh; JWT_KEY is random per start
# unless set. READY_TIMEOUT (60 s) bounds the wait for every /readyz; STOP_TIMEOUT (15 s) the wait
# between SIGTERM and SIGKILL.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
# shellcheck source=env.sh source-path=SCRIPTDIR
source "$here/env.sh"

[[ -x /usr/local/go/bin/go ]] && PATH="/usr/local/go/bin:$PATH"
# The Go release without the standard library's known vulnerabilities (the go lines say the same);
# the go command fetches it once from the module proxy when the installed one is older.
export GOTOOLCHAIN=go1.27.3
: "${READY_TIMEOUT:=60}"
: "${STOP_TIMEOUT:=15}"

managers=(api call billing rtc webhook)
procs=("${managers[@]}" carrier-sim) # what `run` starts, in this order

# Colors only on a terminal (and not when NO_COLOR is set).
if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
	bold=$'\e[1m' red=$'\e[31m' green=$'\e[32m' reset=$'\e[0m'
	declare -A color=([api]=$'\e[36m' [call]=$'\e[32m' [billing]=$'\e[33m' [rtc]=$'\e[35m'
		[webhook]=$'\e[34m' [carrier-sim]=$'\e[90m')
else
	bold='' red='' green='' reset=''
	declare -A color=()
fi

say() { printf '%s==> %s%s\n' "$bold" "$*" "$reset"; }
fail() { printf '%srun.sh: %s%s\n' "$red" "$*" "$reset" >&2; }

binary() { # binary PROC: path of its executable
	case $1 in
	carrier-sim) echo bin/carrier-sim ;;
	*) echo "bin/$1-manager" ;;
	esac
}

admin_address() { # admin_address MANAGER
	local var="${1^^}_ADMIN_ADDRESS"
	echo "${!var}"
}

# proc_env PROC: sets proc_vars to the environment PROC gets on top of the common one (env.sh).
proc_env() {
	proc_vars=()
	if [[ $1 != carrier-sim ]]; then
		proc_vars+=("ADMIN_ADDRESS=$(admin_address "$1")")
	fi
	case $1 in
	api) proc_vars+=("HTTP_ADDRESS=$HTTP_ADDRESS" "JWT_KEY=$JWT_KEY" "ADMIN_USERNAME=$ADMIN_USERNAME"
		"ADMIN_PASSWORD=$ADMIN_PASSWORD" "CORS_ORIGINS=$CORS_ORIGINS" "RTC_SIP_ALLOWED_NETWORKS=$RTC_SIP_ALLOWED_NETWORKS") ;;
	rtc) proc_vars+=("SIP_LISTEN_ADDRESS=$SIP_LISTEN_ADDRESS" "RTC_TEL_TRUNK_URI=$RTC_TEL_TRUNK_URI"
		"NODE_ID=$NODE_ID" "RTC_DIAL_TIMEOUT=$RTC_DIAL_TIMEOUT" "RTC_MAX_DURATION=$RTC_MAX_DURATION"
		"RTC_SIP_ALLOWED_NETWORKS=$RTC_SIP_ALLOWED_NETWORKS" "SIP_TCP_IDLE_TIMEOUT=$SIP_TCP_IDLE_TIMEOUT"
		"SIP_TCP_MAX_CONNECTIONS=$SIP_TCP_MAX_CONNECTIONS") ;;
	webhook) proc_vars+=("WEBHOOK_ALLOWED_NETWORKS=$WEBHOOK_ALLOWED_NETWORKS") ;;
	billing) proc_vars+=("BILLING_INITIAL_BALANCE=$BILLING_INITIAL_BALANCE" "BILLING_RATE_TEL=$BILLING_RATE_TEL"
		"BILLING_RATE_SIP=$BILLING_RATE_SIP") ;;
	carrier-sim) proc_vars+=("CARRIER_LISTEN_ADDRESS=$CARRIER_LISTEN_ADDRESS") ;;
	esac
}

width=0
for p in "${procs[@]}"; do
	if ((${#p} > width)); then width=${#p}; fi
done

# prefix PROC: copies stdin to stdout, each line led by PROC's padded, colored name.
prefix() {
	local label
	printf -v label '%s%-*s |%s ' "${color[$1]:-}" "$width" "$1" "$reset"
	awk -v p="$label" '{ print p $0; fflush() }'
}

# ---- build, migrate -------------------------------------------------------------------------------

services() {
	say "services"
	bash "$here/services.sh" ensure
}

build() {
	have_go
	local -a pkgs=()
	local d
	for d in bin-*-manager/cmd; do
		[[ -d $d ]] && pkgs+=("./$d/...")
	done
	((${#pkgs[@]})) || { fail "no bin-*-manager/cmd directories under $root"; exit 1; }
	say "go build -o bin/ ${pkgs[*]}"
	mkdir -p bin
	go build -o bin/ "${pkgs[@]}"
	local missing=()
	for p in "${procs[@]}"; do [[ -x $(binary "$p") ]] || missing+=("$(binary "$p")"); done
	if ((${#missing[@]})); then
		fail "the build made no ${missing[*]}"
		exit 1
	fi
}

have_go() {
	command -v go >/dev/null || { fail "go not found (looked in PATH and /usr/local/go/bin)"; exit 1; }
}

migrate() {
	local m
	for m in "${managers[@]}"; do
		say "$(binary "$m") migrate"
		proc_env "$m"
		if ! env "${proc_vars[@]}" "$(binary "$m")" migrate 2>&1 | prefix "$m"; then
			fail "$m-manager migrate failed"
			exit 1
		fi
	done
}

# ---- run ------------------------------------------------------------------------------------------

declare -A pid_of=()  # PROC -> pid of the service
declare -A proc_of=() # pid -> PROC
prefixer_pids=()
rundir=''
stopping=0

# port_taken ADDR: something already listens on the TCP address host:port.
port_taken() {
	local host=${1%:*} port=${1##*:}
	host=${host#[}
	host=${host%]}
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${host:-127.0.0.1}" "$port" 2>/dev/null
}

check_ports() {
	local -a addrs=("$HTTP_ADDRESS") taken=()
	local addr m
	for m in "${managers[@]}"; do addrs+=("$(admin_address "$m")"); done
	for addr in "${addrs[@]}"; do
		if port_taken "$addr"; then taken+=("$addr"); fi
	done
	if ((${#taken[@]})); then
		fail "already in use: ${taken[*]} (is another 'make run' going?)"
		exit 1
	fi
}

start() { # start PROC: runs it in the background, its output through a prefixer.
	local p=$1 fifo="$rundir/$1.out"
	mkfifo "$fifo"
	# The prefixer outlives Ctrl-C and friends, to print the service's last lines; it ends at EOF.
	{
		trap '' INT TERM HUP
		prefix "$p"
	} <"$fifo" &
	prefixer_pids+=($!)
	proc_env "$p"
	env "${proc_vars[@]}" "$(binary "$p")" >"$fifo" 2>&1 &
	pid_of[$p]=$!
	proc_of[$!]=$p
}

alive() { kill -0 "$1" 2>/dev/null; }

# stop CODE: SIGTERM to every service still running, SIGKILL to those left after STOP_TIMEOUT,
# then exit with CODE. A second Ctrl-C skips the wait.
stop() {
	local code=$1 p pid
	((stopping)) && return
	stopping=1
	# Finish the job even if stdout is gone (`make run | tee log` and Ctrl-C kills tee).
	trap '' PIPE
	set +e
	trap 'force=1' INT TERM HUP
	force=0
	local -a left=()
	for p in "${procs[@]}"; do
		pid=${pid_of[$p]:-}
		if [[ -n $pid ]] && alive "$pid"; then left+=("$pid"); fi
	done
	if ((${#left[@]})); then
		say "stopping ${#left[@]} services (SIGTERM; SIGKILL after ${STOP_TIMEOUT}s or on a second Ctrl-C)"
		kill -TERM "${left[@]}" 2>/dev/null
		local deadline=$((SECONDS + STOP_TIMEOUT))
		while ((SECONDS < deadline && !force)); do
			local -a still=()
			for pid in "${left[@]}"; do alive "$pid" && still+=("$pid"); done
			((${#still[@]})) || break
			sleep 0.2
		done
		for pid in "${left[@]}"; do
			if alive "$pid"; then
				fail "${proc_of[$pid]} did not stop; SIGKILL"
				kill -KILL "$pid" 2>/dev/null || true
			fi
		done
	fi
	for pid in "${left[@]}"; do wait "$pid" 2>/dev/null || true; done
	# The prefixers end once they have printed the services' last lines; a grandchild that kept a
	# service's output open would hold one, so give them a moment only.
	local deadline=$((SECONDS + 2))
	for pid in "${prefixer_pids[@]}"; do
		while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	done
	if [[ -n $rundir ]]; then rm -rf "$rundir"; fi
	exit "$code"
}

# http_code URL: the status of a GET, or 000.
http_code() {
	curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# check_children: stops everything if a service has died.
check_children() {
	local p
	for p in "${procs[@]}"; do
		if ! alive "${pid_of[$p]}"; then
			local code=0
			wait "${pid_of[$p]}" 2>/dev/null || code=$?
			fail "$p exited unexpectedly (status $code); stopping the rest"
			stop 1
		fi
	done
}

wait_ready() {
	local -a pending=("${managers[@]}")
	local deadline=$((SECONDS + READY_TIMEOUT)) next_report=$((SECONDS + 5)) m
	say "waiting for /readyz of ${pending[*]} (up to ${READY_TIMEOUT}s)"
	while ((${#pending[@]})); do
		check_children
		local -a still=()
		for m in "${pending[@]}"; do
			if [[ $(http_code "http://$(admin_address "$m")/readyz") == 200 ]]; then
				say "$m ready"
			else
				still+=("$m")
			fi
		done
		pending=("${still[@]}")
		((${#pending[@]})) || break
		if ((SECONDS >= deadline)); then
			fail "not ready after ${READY_TIMEOUT}s: ${pending[*]}"
			for m in "${pending[@]}"; do
				fail "  $m: GET http://$(admin_address "$m")/readyz -> $(http_code "http://$(admin_address "$m")/readyz")"
			done
			stop 1
		fi
		if ((SECONDS >= next_report)); then
			say "still waiting for ${pending[*]} ($((deadline - SECONDS))s left)"
			next_report=$((SECONDS + 5))
		fi
		sleep 0.5
	done
}

banner() {
	local line='----------------------------------------------------------------------'
	local pass='(ADMIN_PASSWORD)'
	if [[ $ADMIN_PASSWORD == admin ]]; then pass='admin'; fi
	printf '\n%s%s%s\n' "$green" "$line" "$reset"
	printf '%s  voipbin is up after %ss%s\n\n' "$bold" "$SECONDS" "$reset"
	printf '  API          http://%s\n' "$HTTP_ADDRESS"
	printf '  Admin login  %s / %s\n' "$ADMIN_USERNAME" "$pass"
	printf '  Metrics      %s\n' "$(for m in "${managers[@]}"; do printf '%s=http://%s/metrics ' "$m" "$(admin_address "$m")"; done)"
	printf '  SIP          rtc %s (UDP), carrier-sim %s\n' "$SIP_LISTEN_ADDRESS" "$CARRIER_LISTEN_ADDRESS"
	printf '  Stop         Ctrl-C\n\n'
	print_quickstart
	printf '%s%s%s\n\n' "$green" "$line" "$reset"
}

# ==== print_quickstart ==============================================================================
# What to try first, printed in the banner once everything is ready. Extend it as features land
# (place a call, open the event WebSocket, register a webhook, ...).
print_quickstart() {
	local api="http://$HTTP_ADDRESS" json="Content-Type: application/json"
	cat <<QUICKSTART
  Quick start (paste into a shell)
    # log in as the platform admin and keep the token
    TOKEN=\$(curl -s -X POST $api/auth/login -H '$json' -d '{"username":"$ADMIN_USERNAME","password":"$ADMIN_PASSWORD"}' | sed -E 's/.*"token":"([^"]+)".*/\\1/')
    # create a customer with its own admin user, and log in as that user
    curl -s -X POST $api/v1.0/customers -H "Authorization: Bearer \$TOKEN" -H '$json' -d '{"name":"demo","username":"demo-admin","password":"demo-password-1"}'
    CTOKEN=\$(curl -s -X POST $api/auth/login -H '$json' -d '{"username":"demo-admin","password":"demo-password-1"}' | sed -E 's/.*"token":"([^"]+)".*/\\1/')
    # watch your events live in a second terminal (python3-websocket); same token, your customer id
    CID=\$(curl -s $api/v1.0/customer -H "Authorization: Bearer \$CTOKEN" | sed -E 's/.*"id":"([^"]+)".*/\\1/')
    /usr/bin/python3 bin-api-manager/internal/ws/testdata/ws_client.py --url ws://$HTTP_ADDRESS/v1.0/ws --token "\$CTOKEN" --topic "customer_id:\$CID:call:*" --count 4 --timeout 600 &
    # place a real SIP call to the carrier simulator: rings 1 s, answers, hangs up after 5 s
    curl -s -X POST $api/v1.0/calls -H "Authorization: Bearer \$CTOKEN" -H '$json' -d '{"source":{"type":"tel","target":"+15550001111"},"destinations":[{"type":"tel","target":"+1200000005"}]}'
    # follow it (ringing, progressing, then hangup with duration 5)
    curl -s $api/v1.0/calls -H "Authorization: Bearer \$CTOKEN"

  Carrier simulator numbers ($CARRIER_LISTEN_ADDRESS): +1200000005 answer, hang up after 5 s (+1200NNNNNN: after N s;
  +1200000000: never) · +1180000000 ring until cancelled · +1486000000 busy · +1403000000 / +1404000000 /
  +1503000000 / +1603000000 rejected with that SIP code

QUICKSTART
}
# ==== end print_quickstart ==========================================================================

run() {
	command -v curl >/dev/null || { fail "curl not found (needed to poll /readyz): apt-get install -y curl"; exit 1; }
	if [[ -z ${JWT_KEY:-} ]]; then
		JWT_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
		say "JWT_KEY not set: using a random one for this run (tokens die with it)"
	fi
	check_ports
	services
	build
	migrate

	rundir=$(mktemp -d "${TMPDIR:-/tmp}/voipbin-run.XXXXXX")
	trap 'stop 130' INT
	trap 'stop 143' TERM
	trap 'stop 129' HUP
	trap 'stop $?' EXIT # a failing command under set -e must not leave services behind
	say "starting ${procs[*]}"
	local p
	for p in "${procs[@]}"; do start "$p"; done

	wait_ready
	banner

	# Sleep until a service exits (unexpectedly: only stop() asks them to) or a signal comes.
	local -a pids=()
	for p in "${procs[@]}"; do pids+=("${pid_of[$p]}"); done
	local who code
	while true; do
		who='' code=0
		wait -n -p who "${pids[@]}" || code=$?
		[[ -n $who ]] || continue # interrupted by a trapped signal whose handler returned
		fail "${proc_of[$who]} exited unexpectedly (status $code); stopping the rest"
		stop 1
	done
}

main() {
	case ${1:-run} in
	run) run ;;
	build) build ;;
	migrate)
		: "${JWT_KEY:=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}" # config may require one
		services
		build
		migrate
		;;
	-h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" ;;
	*)
		fail "unknown command '$1' (run, build, migrate)"
		exit 2
		;;
	esac
}

main "$@"
