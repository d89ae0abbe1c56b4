#!/usr/bin/env bash
# govulncheck over every module of the workspace, against an offline copy of the Go vulnerability
# database (the public one is not reachable from every machine that runs `make lint`).
#
#   deploy/local/vulncheck.sh          (make lint runs it; exit 1 when a module calls a known vulnerability)
#
# The database is built from the golang.org/x/vulndb module (its data/osv reports) by that module's
# own cmd/indexdb, once per VULNDB_VERSION, into .cache/vulndb/<version> (git ignores .cache/); it is
# rebuilt only when that directory is missing. Both tools are pinned here and built with
# `go install pkg@version` into .cache/tools/ (the module proxy's checksums verify them). Each module
# is checked on its own (GOWORK=off), with the versions its own go.mod and go.sum pin, as the
# Dockerfiles build it; only vulnerabilities in code that is actually called fail the check.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
[[ -x /usr/local/go/bin/go ]] && PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=go1.27.3 # the release the go.mod files name; govulncheck reports the stdlib of this one

: "${GOVULNCHECK_VERSION:=v1.9.0}"
: "${VULNDB_VERSION:=v0.0.0-20261105234957-e22db6528018}"
cache="$root/.cache"
tools="$cache/tools"
db="$cache/vulndb/$VULNDB_VERSION"

say() { printf '%s\n' "$*"; }

# tool NAME PKG VERSION: path of the built tool, built once per version.
tool() {
	local name=$1 pkg=$2 version=$3 dir="$tools/$1@$3"
	if [[ ! -x $dir/$name ]]; then
		say "building $pkg@$version" >&2
		mkdir -p "$dir"
		GOWORK=off GOBIN="$dir" go install "$pkg@$version" >&2
	fi
	printf '%s\n' "$dir/$name"
}

govulncheck=$(tool govulncheck golang.org/x/vuln/cmd/govulncheck "$GOVULNCHECK_VERSION")

if [[ ! -f $db/index/db.json ]]; then
	indexdb=$(tool indexdb golang.org/x/vulndb/cmd/indexdb "$VULNDB_VERSION")
	src=$(GOWORK=off go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[[ -d $src/data/osv ]] || { say "vulncheck: no data/osv in golang.org/x/vulndb@$VULNDB_VERSION ($src)" >&2; exit 1; }
	say "building the vulnerability database from $(find "$src/data/osv" -name '*.json' | wc -l) reports of golang.org/x/vulndb@$VULNDB_VERSION"
	tmp="$db.tmp.$$"
	rm -rf "$tmp"
	trap 'rm -rf "$tmp"' EXIT
	"$indexdb" -vulns "$src/data/osv" -out "$tmp"
	mkdir -p "$(dirname "$db")"
	rm -rf "$db"
	mv "$tmp" "$db"
	trap - EXIT
fi

say "$("$govulncheck" -version 2>/dev/null | sed -n 's/^Scanner: //p'), database golang.org/x/vulndb@$VULNDB_VERSION, $(go env GOVERSION)"
fail=()
for dir in $(go list -m -f '{{.Dir}}'); do
	rel=${dir#"$root"/}
	say "-- $rel"
	# govulncheck exits 3 when it finds a called vulnerability, other non-zero codes on errors.
	if ! GOWORK=off "$govulncheck" -C "$dir" -db "file://$db" ./...; then
		fail+=("$rel")
	fi
done
if ((${#fail[@]})); then
	say "govulncheck: called vulnerabilities (or errors) in: ${fail[*]}" >&2
	exit 1
fi
say "govulncheck: no called vulnerability in any module"
