package check

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Where the images keep their binaries.
const (
	binDir          = "/usr/local/bin/"
	healthcheckPath = binDir + "healthcheck"
)

// CheckDockerfile checks the shape of a component's Dockerfile: multi-stage, a static Go build,
// a scratch final image that copies only built files, a numeric non-root user, an exec-form
// ENTRYPOINT and HEALTHCHECK whose binaries the image really has, sources that exist in the
// build context (the repository root less .dockerignore), ENV names the binary reads and EXPOSE
// for each address it is told to listen on. vars may be nil to skip the ENV names.
func CheckDockerfile(bc *BuildContext, c Component, df *Dockerfile, vars Vars) []Problem {
	ps := &problems{file: c.Dockerfile}
	if len(df.Stages) < 2 {
		ps.add("", "has %d stage; want a multi-stage build (build, then a minimal final image)", len(df.Stages))
	}
	checkGoVersion(ps, bc.Root, c, df)
	for i := range df.Stages {
		st := &df.Stages[i]
		for _, in := range st.Instructions {
			if (in.Cmd == "COPY" || in.Cmd == "ADD") && in.Flags["from"] == "" {
				for _, src := range in.Args[:max(len(in.Args)-1, 0)] {
					files, err := bc.Files(src)
					switch {
					case err != nil:
						ps.add(stageName(st), "line %d: %s %s: not in the build context (the repository root)", in.Line, in.Cmd, src)
					case len(files) == 0:
						ps.add(stageName(st), "line %d: %s %s: everything in it is excluded by .dockerignore", in.Line, in.Cmd, src)
					}
				}
			}
		}
	}

	final := df.Final()
	fname := stageName(final)
	if final.Base != "scratch" {
		ps.add(fname, "final image is FROM %s; want scratch (a static binary needs nothing else)", final.Base)
	}
	copied := map[string]Instruction{} // destination in the final image -> the COPY --from
	for _, in := range final.Instructions {
		switch in.Cmd {
		case "COPY", "ADD":
			if in.Flags["from"] == "" {
				ps.add(fname, "line %d: %s from the build context into the final image; copy only what a build stage made", in.Line, in.Cmd)
				continue
			}
			if len(in.Args) == 2 {
				dest := in.Args[1]
				if strings.HasSuffix(dest, "/") {
					dest += path.Base(in.Args[0])
				}
				copied[dest] = in
			}
		case "RUN":
			ps.add(fname, "line %d: RUN in the final image (scratch has no shell)", in.Line)
		}
	}
	checkUser(ps, final)

	entry, ok := final.Last("ENTRYPOINT")
	want := binDir + c.Name
	switch {
	case !ok:
		ps.add(fname, "no ENTRYPOINT; want [%q]", want)
	case !entry.Exec || len(entry.Args) == 0 || entry.Args[0] != want:
		ps.add(fname, "line %d: ENTRYPOINT %s; want the exec form [%q] (arguments such as migrate follow it)", entry.Line, entry.Rest, want)
	}
	if cp, ok := copied[want]; !ok {
		ps.add(fname, "the final image has no %s (no COPY --from=<stage> to it)", want)
	} else {
		checkGoBuild(ps, df, c, cp)
	}

	env := map[string]string{}
	for _, kv := range final.Env() {
		env[kv[0]] = kv[1]
		if vars != nil && !vars.Known(c.Name, kv[0]) {
			ps.add(fname, "ENV %s: %s does not read it (`%s vars`)", kv[0], c.Name, c.Name)
		}
	}
	checkHealthcheck(ps, c, final, env, copied)
	checkExpose(ps, final, env)
	return ps.list
}

func stageName(st *Stage) string {
	if st.Name != "" {
		return "stage " + st.Name
	}
	return "final stage"
}

var goDirective = regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)\s*$`)

// checkGoVersion wants ARG GO_VERSION equal to the module's go directive, patch release included:
// the go directive names the first toolchain without the standard library's known vulnerabilities,
// and the official images set GOTOOLCHAIN=local, so an older image tag would refuse to build.
func checkGoVersion(ps *problems, root string, c Component, df *Dockerfile) {
	mod, err := os.ReadFile(filepath.Join(root, c.Module, "go.mod"))
	if err != nil {
		ps.add("", "cannot read the module's go.mod: %v", err)
		return
	}
	m := goDirective.FindSubmatch(mod)
	if m == nil {
		ps.add("", "%s/go.mod has no go directive", c.Module)
		return
	}
	v, ok := df.ArgDefault("GO_VERSION")
	if !ok {
		ps.add("", "no global ARG GO_VERSION=<version> (want %s, the go directive of %s/go.mod)", m[1], c.Module)
		return
	}
	if v != string(m[1]) {
		ps.add("", "ARG GO_VERSION=%s, but %s/go.mod says go %s", v, c.Module, m[1])
	}
}

// checkUser wants USER uid:gid, numeric (scratch has no /etc/passwd and Kubernetes' runAsNonRoot
// can only verify a number) and not 0.
func checkUser(ps *problems, final *Stage) {
	user, ok := final.Last("USER")
	if !ok {
		ps.add(stageName(final), "no USER: the image would run as root")
		return
	}
	for _, id := range strings.Split(strings.Join(user.Args, ""), ":") {
		n, err := strconv.Atoi(id)
		if err != nil {
			ps.add(stageName(final), "line %d: USER %s: want numeric uid:gid (scratch has no /etc/passwd)", user.Line, user.Rest)
			return
		}
		if n == 0 {
			ps.add(stageName(final), "line %d: USER %s runs as root", user.Line, user.Rest)
			return
		}
	}
}

// checkGoBuild follows the binary's COPY --from back to the RUN that builds it: a static
// (CGO_ENABLED=0), reproducible (-trimpath) go build of the component's main package.
func checkGoBuild(ps *problems, df *Dockerfile, c Component, cp Instruction) {
	from := cp.Flags["from"]
	st, ok := df.Stage(from)
	if !ok {
		ps.add("final stage", "line %d: COPY --from=%s: no stage of that name", cp.Line, from)
		return
	}
	out := cp.Args[0]
	run, ok := BuildCommand(st, out)
	if !ok {
		ps.add(stageName(st), "no RUN builds %s (want `go build ... -o %s %s`)", out, out, c.Package())
		return
	}
	for _, want := range []string{"CGO_ENABLED=0", "GOWORK=off", "-trimpath", c.Package()} {
		if !slices.Contains(strings.Fields(run.Rest), want) {
			ps.add(stageName(st), "line %d: the build of %s lacks %s", run.Line, out, want)
		}
	}
}

// BuildCommand finds the RUN of the stage that runs `go build` with -o out.
func BuildCommand(st *Stage, out string) (Instruction, bool) {
	for _, in := range st.Instructions {
		if in.Cmd != "RUN" || !strings.Contains(in.Rest, "go build") {
			continue
		}
		w := strings.Fields(in.Rest)
		for i := range w {
			if (w[i] == "-o" && i+1 < len(w) && w[i+1] == out) || w[i] == "-o="+out {
				return in, true
			}
		}
	}
	return Instruction{}, false
}

func checkHealthcheck(ps *problems, c Component, final *Stage, env map[string]string, copied map[string]Instruction) {
	fname := stageName(final)
	hc, ok := final.Last("HEALTHCHECK")
	if !ok {
		ps.add(fname, "no HEALTHCHECK")
		return
	}
	args := hc.Args
	if len(args) > 0 && strings.EqualFold(args[0], "NONE") {
		ps.add(fname, "line %d: HEALTHCHECK NONE", hc.Line)
		return
	}
	// HEALTHCHECK [flags] CMD ["/usr/local/bin/healthcheck", "URL"]: the words after CMD.
	rest := strings.TrimSpace(hc.Rest)
	cmd, execForm, _ := strings.Cut(rest, " ")
	in, err := parseInstruction(hc.Line, "CMD "+strings.TrimSpace(execForm))
	if !strings.EqualFold(cmd, "CMD") || err != nil || !in.Exec || len(in.Args) != 2 || in.Args[0] != healthcheckPath {
		ps.add(fname, "line %d: HEALTHCHECK %s; want CMD [%q, \"http://127.0.0.1:<admin port>/readyz\"]", hc.Line, rest, healthcheckPath)
		return
	}
	if _, ok := copied[healthcheckPath]; !ok {
		ps.add(fname, "HEALTHCHECK runs %s, which the image does not have", healthcheckPath)
	}
	if msg := probeTarget(c, in.Args[1], env); msg != "" {
		ps.add(fname, "line %d: HEALTHCHECK %s: %s", hc.Line, in.Args[1], msg)
	}
}

// probeTarget checks a healthcheck URL against the component's listen addresses: a manager's
// is http://127.0.0.1:<ADMIN_ADDRESS port>/readyz; the carrier simulator's a TCP connection to
// its SIP port. It returns "" when the target is right.
func probeTarget(c Component, target string, env map[string]string) string {
	u, err := url.Parse(target)
	if err != nil {
		return "not a URL"
	}
	listen, name, scheme, urlPath := env["ADMIN_ADDRESS"], "ADMIN_ADDRESS", "http", "/readyz"
	if !c.Manager {
		listen, name, scheme, urlPath = env["CARRIER_LISTEN_ADDRESS"], "CARRIER_LISTEN_ADDRESS", "tcp", ""
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Sprintf("%s is %q: the port to probe is unknown", name, listen)
	}
	if u.Scheme != scheme || u.Hostname() != "127.0.0.1" || u.Port() != port || u.Path != urlPath {
		return fmt.Sprintf("want %s://127.0.0.1:%s%s (%s is %s)", scheme, port, urlPath, name, listen)
	}
	return ""
}

// checkExpose wants every port the image listens on (the ENV *_ADDRESS values) EXPOSEd.
func checkExpose(ps *problems, final *Stage, env map[string]string) {
	exposed := map[string]bool{}
	for _, in := range final.Instructions {
		if in.Cmd == "EXPOSE" {
			for _, p := range in.Args {
				port, _, _ := strings.Cut(p, "/")
				exposed[port] = true
			}
		}
	}
	for name, v := range env {
		if !strings.HasSuffix(name, "_ADDRESS") {
			continue
		}
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			ps.add(stageName(final), "ENV %s=%s is not host:port", name, v)
			continue
		}
		if host != "0.0.0.0" && host != "" && host != "::" {
			ps.add(stageName(final), "ENV %s=%s: a container must listen on 0.0.0.0 to be reached", name, v)
		}
		if !exposed[port] {
			ps.add(stageName(final), "ENV %s=%s: port %s is not EXPOSEd", name, v, port)
		}
	}
}
