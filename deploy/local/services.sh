#!/usr/bin/env bash
# Makes sure the services the stack and its tests need are up: MariaDB, Redis and RabbitMQ on
# loopback (started, or installed with apt as root, when they are not), and sipp for the SIP tests.
#
#   services.sh [ensure]   MariaDB + Redis + RabbitMQ up, database created, root can log in over TCP
#   services.sh check      only report; exit non-zero when one is unreachable
#   services.sh sipp       sipp (Debian package sip-tester) installed
#   services.sh testdeps   sipp plus /usr/bin/python3 with websocket-client, Flask and requests
#
# DATABASE_DSN, REDIS_ADDRESS and RABBITMQ_ADDRESS (defaults in env.sh) say where each service is;
# one that points away from loopback is only checked, never started or installed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh source-path=SCRIPTDIR
source "$here/env.sh"

# Daemons and rabbitmqctl live in sbin, which a non-root PATH often lacks.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

: "${MARIADB_START_TIMEOUT:=60}"
: "${REDIS_START_TIMEOUT:=20}"
: "${RABBITMQ_START_TIMEOUT:=60}"

die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ $(id -u) -eq 0 ]]; }
has_systemd() { [[ -d /run/systemd/system ]]; }

is_loopback() {
	case $1 in
	'' | localhost | 127.* | ::1 | '[::1]') return 0 ;;
	*) return 1 ;;
	esac
}

# tcp_open HOST PORT: something accepts connections there.
tcp_open() {
	local host=${1#[} port=$2
	host=${host%]}
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# wait_until NAME SECONDS COMMAND...: polls COMMAND once a second, printing a dot each time.
wait_until() {
	local name=$1 limit=$2
	shift 2
	local deadline=$((SECONDS + limit))
	printf '%s: waiting' "$name"
	until "$@"; do
		if ((SECONDS >= deadline)); then
			printf ' gave up after %ss\n' "$limit"
			return 1
		fi
		printf '.'
		sleep 1
	done
	printf ' ok\n'
}

# host_port ADDR DEFAULT_PORT: sets HOST and PORT from "host:port", "[v6]:port" or "host".
host_port() {
	local addr=$1
	PORT=$2
	if [[ $addr == \[*\]:* ]]; then
		HOST=${addr%]:*}]
		PORT=${addr##*]:}
	elif [[ $addr == \[*\] ]]; then
		HOST=$addr
	elif [[ $addr == *:*:* ]]; then
		HOST=$addr # bare IPv6, no port
	elif [[ $addr == *:* ]]; then
		HOST=${addr%:*}
		PORT=${addr##*:}
	else
		HOST=$addr
	fi
	HOST=${HOST:-127.0.0.1}
	PORT=${PORT:-$2}
}

# ---- apt ------------------------------------------------------------------------------------------

apt_updated=0

# apt_install PACKAGE...: installs as root (apt-get update once per run); otherwise says what to run.
apt_install() {
	if ! is_root; then
		printf 'services.sh: missing packages: %s\n' "$*" >&2
		printf 'services.sh: install them with:\n  sudo apt-get update && sudo apt-get install -y %s\n' "$*" >&2
		exit 1
	fi
	if ((!apt_updated)); then
		echo "apt: apt-get update"
		apt-get update -qq </dev/null
		apt_updated=1
	fi
	echo "apt: apt-get install -y $*"
	apt-get install -y -qq "$@" </dev/null >/dev/null
}

# ---- MariaDB --------------------------------------------------------------------------------------

# parse_dsn: splits DATABASE_DSN (go-sql-driver/mysql form
# [user[:password]@][net[(addr)]]/dbname[?params]) into DB_USER DB_PASS DB_NET DB_HOST DB_PORT
# DB_SOCKET DB_NAME.
parse_dsn() {
	local dsn=${DATABASE_DSN%%\?*} cred='' netaddr
	DB_NAME=${dsn##*/}
	dsn=${dsn%/*}
	if [[ $dsn == *@* ]]; then
		cred=${dsn%@*}
		netaddr=${dsn##*@}
	else
		netaddr=$dsn
	fi
	DB_USER=${cred%%:*}
	DB_PASS=''
	[[ $cred == *:* ]] && DB_PASS=${cred#*:}
	DB_USER=${DB_USER:-root}
	DB_NET=tcp DB_SOCKET='' DB_HOST=127.0.0.1 DB_PORT=3306
	case $netaddr in
	unix\(*\))
		DB_NET=unix
		DB_SOCKET=${netaddr#unix(}
		DB_SOCKET=${DB_SOCKET%)}
		DB_HOST=localhost
		;;
	tcp\(*\) | tcp6\(*\))
		local addr=${netaddr#*(}
		host_port "${addr%)}" 3306
		DB_HOST=$HOST DB_PORT=$PORT
		;;
	'' | tcp) ;;
	*) die "DATABASE_DSN: unsupported network in '$netaddr'" ;;
	esac
	[[ $DB_NAME =~ ^[A-Za-z0-9_]+$ ]] || die "DATABASE_DSN: database name '$DB_NAME' is not [A-Za-z0-9_]+"
}

mariadb_client() {
	if have mariadb; then echo mariadb; elif have mysql; then echo mysql; else return 1; fi
}

# db_conn_args: the client options that reach the server the DSN names (password via MYSQL_PWD).
db_conn_args() {
	if [[ $DB_NET == unix ]]; then
		printf '%s\n' --protocol=SOCKET "--socket=$DB_SOCKET" "-u$DB_USER"
	else
		local host=${DB_HOST#[}
		printf '%s\n' --protocol=TCP "-h${host%]}" "-P$DB_PORT" "-u$DB_USER"
	fi
}

# db_sql SQL: runs SQL as the DSN's user, the way the services connect.
db_sql() {
	local client args
	client=$(mariadb_client) || return 1
	mapfile -t args < <(db_conn_args)
	MYSQL_PWD=$DB_PASS "$client" "${args[@]}" --connect-timeout=3 -N -B -e "$1"
}

# socket_root_sql SQL: runs SQL as root over the local socket (unix_socket auth, needs OS root).
# MARIADB_SOCKET names a socket other than the client's default.
socket_root_sql() {
	local client
	client=$(mariadb_client) || return 1
	local -a sock=()
	[[ -n ${MARIADB_SOCKET:-} ]] && sock=("--socket=$MARIADB_SOCKET")
	MYSQL_PWD='' "$client" --protocol=SOCKET "${sock[@]}" -uroot --connect-timeout=3 -N -B -e "$1"
}

# mariadb_alive: the server answers, even if only to refuse the login (mariadb_login fixes that):
# mysqladmin ping succeeds on "access denied" but not on "host not allowed" (skip-name-resolve).
mariadb_alive() {
	if have mysqladmin; then
		local args out
		mapfile -t args < <(db_conn_args)
		out=$(MYSQL_PWD=$DB_PASS mysqladmin "${args[@]}" --connect-timeout=2 ping 2>&1) && return 0
		[[ $out == *"is not allowed to connect"* || $out == *"Access denied"* ]]
	elif [[ $DB_NET == unix ]]; then
		[[ -S $DB_SOCKET ]]
	else
		tcp_open "$DB_HOST" "$DB_PORT"
	fi
}

mariadb_installed() { [[ -x /usr/sbin/mariadbd || -x /usr/sbin/mysqld ]] || have mariadbd; }

mariadb_start() {
	if has_systemd; then
		systemctl start mariadb
		return
	fi
	if id mysql >/dev/null 2>&1; then
		install -d -o mysql -g mysql -m 0755 /run/mysqld
	fi
	local bin=/usr/sbin/mariadbd
	[[ -x $bin ]] || bin=/usr/sbin/mysqld
	start-stop-daemon --start --oknodo --background --exec "$bin"
}

# mariadb_login: makes root log in over TCP with an empty password. A fresh Debian MariaDB
# authenticates root@localhost by unix_socket only; allow an empty password as an alternative.
mariadb_login() {
	local err
	if err=$(db_sql 'SELECT 1' 2>&1 >/dev/null); then
		return 0
	fi
	if [[ $DB_USER != root || -n $DB_PASS || $DB_NET != tcp ]] || ! is_root || ! socket_root_sql 'SELECT 1' >/dev/null 2>&1; then
		printf 'mariadb: cannot log in as %s: %s\n' "$DB_USER" "$err" >&2
		return 1
	fi
	echo "mariadb: root cannot log in over TCP; allowing an empty password for root@localhost"
	socket_root_sql "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; FLUSH PRIVILEGES;"
	db_sql 'SELECT 1' >/dev/null 2>&1 && return 0
	# With skip-name-resolve a TCP client is root@127.0.0.1 (or root@::1), not root@localhost.
	local h
	for h in 127.0.0.1 ::1; do
		echo "mariadb: allowing root@'$h' with an empty password"
		socket_root_sql "CREATE USER IF NOT EXISTS root@'$h' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
			ALTER USER root@'$h' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
			GRANT ALL PRIVILEGES ON *.* TO root@'$h' WITH GRANT OPTION; FLUSH PRIVILEGES;"
	done
	if ! err=$(db_sql 'SELECT 1' 2>&1 >/dev/null); then
		printf 'mariadb: root still cannot log in over TCP: %s\n' "$err" >&2
		return 1
	fi
}

# needs_start STATE: the service is to be started by us. STATE is what the status line will say:
# up, installed (its package's install script started it), started, or installed and started.
needs_start() { [[ $1 == started || $1 == 'installed and started' ]]; }

# ensure_mariadb STATE (see needs_start)
ensure_mariadb() {
	local how=$1
	if ! is_loopback "$DB_HOST"; then
		mariadb_alive || die "mariadb: $DB_HOST:$DB_PORT unreachable (DATABASE_DSN points there; not managed here)"
		echo "mariadb: up ($DB_HOST:$DB_PORT, not managed here)"
		return
	fi
	if needs_start "$how"; then
		mariadb_start || die "mariadb: could not start it"
		wait_until mariadb "$MARIADB_START_TIMEOUT" mariadb_alive ||
			die "mariadb: not answering on $DB_HOST:$DB_PORT (see /var/log/mysql/)"
	fi
	mariadb_client >/dev/null || die "mariadb: no mariadb client; install mariadb-client"
	mariadb_login || exit 1
	db_sql "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`" >/dev/null ||
		die "mariadb: could not create database $DB_NAME"
	echo "mariadb: $how ($DB_HOST:$DB_PORT, database $DB_NAME)"
}

# ---- Redis ----------------------------------------------------------------------------------------

parse_redis() {
	local addr=$REDIS_ADDRESS
	REDIS_URL=''
	if [[ $addr == redis://* || $addr == rediss://* ]]; then
		REDIS_URL=$addr
		addr=${addr#*://}
		addr=${addr##*@}
		addr=${addr%%/*}
	fi
	host_port "$addr" 6379
	REDIS_HOST=$HOST REDIS_PORT=$PORT
}

redis_alive() {
	if have redis-cli; then
		local out
		if [[ -n $REDIS_URL ]]; then
			out=$(timeout 3 redis-cli -u "$REDIS_URL" ping 2>/dev/null) || return 1
		else
			local host=${REDIS_HOST#[}
			out=$(timeout 3 redis-cli -h "${host%]}" -p "$REDIS_PORT" ping 2>/dev/null) || return 1
		fi
		[[ $out == PONG ]]
	else
		tcp_open "$REDIS_HOST" "$REDIS_PORT"
	fi
}

redis_start() {
	if has_systemd; then
		systemctl start redis-server
		return
	fi
	mkdir -p /var/lib/redis /var/log/redis
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
}

ensure_redis() {
	local how=$1
	if ! is_loopback "$REDIS_HOST"; then
		redis_alive || die "redis: $REDIS_HOST:$REDIS_PORT unreachable (REDIS_ADDRESS points there; not managed here)"
		echo "redis: up ($REDIS_HOST:$REDIS_PORT, not managed here)"
		return
	fi
	if needs_start "$how"; then
		redis_start || die "redis: could not start it"
		wait_until redis "$REDIS_START_TIMEOUT" redis_alive ||
			die "redis: not answering on $REDIS_HOST:$REDIS_PORT (see /var/log/redis/ci.log)"
	fi
	echo "redis: $how ($REDIS_HOST:$REDIS_PORT)"
}

# ---- RabbitMQ -------------------------------------------------------------------------------------

parse_rabbitmq() {
	local addr=$RABBITMQ_ADDRESS port=5672
	[[ $addr == amqps://* ]] && port=5671
	addr=${addr#*://}
	addr=${addr##*@}
	addr=${addr%%/*}
	host_port "$addr" "$port"
	RABBIT_HOST=$HOST RABBIT_PORT=$PORT
}

# rabbitmq_alive: the AMQP port accepts connections and, when this machine's node can be asked
# (root holds the Erlang cookie), the node agrees that its listeners are up.
rabbitmq_alive() {
	tcp_open "$RABBIT_HOST" "$RABBIT_PORT" || return 1
	if is_loopback "$RABBIT_HOST" && is_root && have rabbitmq-diagnostics; then
		timeout 20 rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 || return 1
	fi
}

rabbitmq_start() {
	if has_systemd; then
		systemctl start rabbitmq-server
		return
	fi
	rabbitmq-server -detached >/dev/null
}

ensure_rabbitmq() {
	local how=$1
	if ! is_loopback "$RABBIT_HOST"; then
		tcp_open "$RABBIT_HOST" "$RABBIT_PORT" ||
			die "rabbitmq: $RABBIT_HOST:$RABBIT_PORT unreachable (RABBITMQ_ADDRESS points there; not managed here)"
		echo "rabbitmq: up ($RABBIT_HOST:$RABBIT_PORT, not managed here)"
		return
	fi
	if [[ $how == booting ]]; then
		# The port is open but the node is not done: give it the start timeout, then go on.
		how=up
		wait_until rabbitmq "$RABBITMQ_START_TIMEOUT" rabbitmq_alive ||
			echo "rabbitmq: port $RABBIT_PORT open but rabbitmq-diagnostics keeps failing; going on"
	elif needs_start "$how"; then
		rabbitmq_start || die "rabbitmq: could not start it"
		wait_until rabbitmq "$RABBITMQ_START_TIMEOUT" rabbitmq_alive ||
			die "rabbitmq: not answering on $RABBIT_HOST:$RABBIT_PORT (see /var/log/rabbitmq/)"
	fi
	echo "rabbitmq: $how ($RABBIT_HOST:$RABBIT_PORT)"
}

# ---- subcommands ----------------------------------------------------------------------------------

cmd_ensure() {
	parse_dsn
	parse_redis
	parse_rabbitmq

	# First see what is up, so that one apt-get run installs everything missing.
	local db=up redis=up rabbit=up
	local -a missing=()
	if is_loopback "$DB_HOST"; then
		if ! mariadb_alive; then
			db=started
			mariadb_installed || { missing+=(mariadb-server) && db='installed and started'; }
		elif ! mariadb_client >/dev/null; then
			missing+=(mariadb-client)
		fi
	fi
	if is_loopback "$REDIS_HOST" && ! redis_alive; then
		redis=started
		have redis-server || { missing+=(redis-server) && redis='installed and started'; }
	fi
	if is_loopback "$RABBIT_HOST" && ! rabbitmq_alive; then
		if tcp_open "$RABBIT_HOST" "$RABBIT_PORT"; then
			rabbit=booting
		else
			rabbit=started
			have rabbitmq-server || { missing+=(rabbitmq-server) && rabbit='installed and started'; }
		fi
	fi
	if ((${#missing[@]})); then
		apt_install "${missing[@]}"
		# A package's install script may have started its service already.
		[[ $db == installed* ]] && mariadb_alive && db=installed
		[[ $redis == installed* ]] && redis_alive && redis=installed
		[[ $rabbit == installed* ]] && rabbitmq_alive && rabbit=installed
	fi
	ensure_mariadb "$db"
	ensure_redis "$redis"
	ensure_rabbitmq "$rabbit"
}

cmd_check() {
	parse_dsn
	parse_redis
	parse_rabbitmq
	local bad=0
	if mariadb_alive && db_sql 'SELECT 1' >/dev/null 2>&1; then echo "mariadb: up ($DB_HOST:$DB_PORT)"; else echo "mariadb: down ($DB_HOST:$DB_PORT)"; bad=1; fi
	if redis_alive; then echo "redis: up ($REDIS_HOST:$REDIS_PORT)"; else echo "redis: down ($REDIS_HOST:$REDIS_PORT)"; bad=1; fi
	if rabbitmq_alive; then echo "rabbitmq: up ($RABBIT_HOST:$RABBIT_PORT)"; else echo "rabbitmq: down ($RABBIT_HOST:$RABBIT_PORT)"; bad=1; fi
	return "$bad"
}

cmd_sipp() {
	local how=present
	if ! have sipp; then
		apt_install sip-tester
		how=installed
	fi
	have sipp || die "sipp: still not found after installing sip-tester"
	local version
	version=$(sipp -v 2>&1 | grep -o -m1 'v[0-9][0-9.]*' || true)
	echo "sipp: $how ($(command -v sipp)${version:+, $version})"
}

# The black-box peers of the tests: sipp, and Debian's Python with websocket-client and Flask
# (/usr/bin/python3, not a pyenv or venv one).
cmd_testdeps() {
	cmd_sipp
	local missing=() mod pkg
	for pair in websocket:python3-websocket flask:python3-flask requests:python3-requests; do
		mod=${pair%%:*} pkg=${pair#*:}
		/usr/bin/python3 -c "import $mod" >/dev/null 2>&1 || missing+=("$pkg")
	done
	if ((${#missing[@]})); then
		apt_install "${missing[@]}"
	fi
	/usr/bin/python3 -c 'import websocket, flask, requests' || die "python test peers: still missing after installing ${missing[*]}"
	echo "python peers: ok (/usr/bin/python3 with websocket-client, flask, requests)"
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
	(($#)) || set -- ensure
	local cmd
	for cmd in "$@"; do
		case $cmd in
		ensure) cmd_ensure ;;
		check) cmd_check ;;
		sipp) cmd_sipp ;;
		testdeps) cmd_testdeps ;;
		-h | --help | help) usage ;;
		*)
			usage >&2
			exit 2
			;;
		esac
	done
}

main "$@"
