package check

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"voipbin/pkg/envconf"
)

// LoadCompose parses compose files (later ones override earlier ones, as with `docker compose
// -f a.yml -f b.yml`) with compose-go, the library docker compose itself uses: schema
// validation, YAML anchors and merges, !reset and !override, ${VAR:-default} interpolation
// (against env only, never this process's environment, and no .env file), profiles, and
// consistency (depends_on targets, volumes). The project directory is root, as for `docker
// compose up` at the repository root.
func LoadCompose(ctx context.Context, root string, env []string, files ...string) (*types.Project, error) {
	opts, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(root),
		cli.WithEnv(env),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(ctx)
}

// Port is a published port: the service and its container port.
type Port struct {
	Service  string
	Target   uint32
	Protocol string // tcp or udp
}

func (p Port) String() string { return fmt.Sprintf("%s %d/%s", p.Service, p.Target, p.Protocol) }

// ComposeRules is what the compose file is checked against.
type ComposeRules struct {
	File       string // for Problems, relative to Root
	Root       string // the repository root: every image builds from it
	Components []Component
	Vars       Vars
	// Infra are the other services the stack must have (MariaDB, Redis, RabbitMQ); each needs a
	// healthcheck, since the components wait for them to be healthy.
	Infra []string
	// Published are the only ports published on the host, and all must be.
	Published []Port
	// LocalEnv lists, per component, the variables `make run` sets for it (see LocalEnv); the
	// compose file must set each one that the component reads.
	LocalEnv map[string][]string
}

// CheckCompose checks a loaded compose project.
func CheckCompose(p *types.Project, r ComposeRules) []Problem {
	ps := &problems{file: r.File}
	known := map[string]bool{}
	for _, name := range r.Infra {
		known[name] = true
		svc, ok := p.Services[name]
		if !ok {
			ps.add(name, "missing (the stack needs it)")
			continue
		}
		if svc.HealthCheck == nil || svc.HealthCheck.Disable || len(svc.HealthCheck.Test) == 0 {
			ps.add(name, "no healthcheck: nothing can wait for it to be ready")
		}
	}
	for _, c := range r.Components {
		known[c.Name] = true
		svc, ok := p.Services[c.Name]
		if !ok {
			ps.add(c.Name, "missing")
			continue
		}
		checkComposeService(ps, p, r, c, svc)
	}
	for name := range p.Services {
		if !known[name] {
			ps.add(name, "a service the checks do not know: add it to the rules (deploy/check) or remove it")
		}
	}
	checkPublished(ps, p, r.Published)
	slices.SortFunc(ps.list, func(a, b Problem) int { return strings.Compare(a.String(), b.String()) })
	return ps.list
}

func checkComposeService(ps *problems, p *types.Project, r ComposeRules, c Component, svc types.ServiceConfig) {
	name := c.Name
	// Build: from the repository root, with the component's Dockerfile.
	switch {
	case svc.Build == nil:
		ps.add(name, "no build: it must build from %s", c.Dockerfile)
	default:
		ctxDir := svc.Build.Context
		if !filepath.IsAbs(ctxDir) {
			ctxDir = filepath.Join(r.Root, ctxDir)
		}
		if filepath.Clean(ctxDir) != filepath.Clean(r.Root) {
			ps.add(name, "build context %s; want the repository root", svc.Build.Context)
		}
		df := svc.Build.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(ctxDir, df)
		}
		if filepath.Clean(df) != filepath.Join(r.Root, c.Dockerfile) {
			ps.add(name, "dockerfile %s; want %s", svc.Build.Dockerfile, c.Dockerfile)
		} else if _, err := os.Stat(df); err != nil {
			ps.add(name, "dockerfile %s does not exist", c.Dockerfile)
		}
	}
	if img, _, _ := strings.Cut(svc.Image, ":"); img != "voipbin/"+name {
		ps.add(name, "image %q; want voipbin/%s:<tag>, the name deploy/k8s runs", svc.Image, name)
	}
	if svc.PullPolicy != types.PullPolicyBuild {
		ps.add(name, "pull_policy %q; want build (never run an image a registry holds under this name)", svc.PullPolicy)
	}

	// Environment: only names the binary reads, every required one set, listeners reachable.
	env := map[string]string{}
	for k, v := range svc.Environment {
		if !r.Vars.Known(name, k) {
			ps.add(name, "environment %s: %s does not read it (`%s vars`)", k, name, name)
		}
		if v == nil {
			ps.add(name, "environment %s has no value: it would come from the host's environment", k)
			continue
		}
		env[k] = *v
	}
	for _, v := range r.Vars[name] {
		val, set := env[v.Name]
		if v.Required && strings.TrimSpace(val) == "" {
			ps.add(name, "environment %s is required and not set", v.Name)
		}
		if isListenVar(v) {
			if !set {
				ps.add(name, "environment %s is not set: its default %s is unreachable from other containers", v.Name, v.Default)
			} else if host, _, err := net.SplitHostPort(val); err != nil || !wildcard(host) {
				ps.add(name, "environment %s=%s: listen on 0.0.0.0 in a container", v.Name, val)
			}
		}
		if !set && v.Default != "" {
			env[v.Name] = v.Default // for the probe target below
		}
	}
	for _, want := range r.LocalEnv[name] {
		if _, ok := env[want]; !ok && r.Vars.Known(name, want) {
			ps.add(name, "environment %s: `make run` sets it (deploy/local), compose does not", want)
		}
	}

	// Healthcheck: the image's probe binary against the component's own port.
	hc := svc.HealthCheck
	switch {
	case hc == nil || hc.Disable || len(hc.Test) == 0:
		ps.add(name, "no healthcheck")
	case len(hc.Test) != 3 || hc.Test[0] != "CMD" || hc.Test[1] != healthcheckPath:
		ps.add(name, "healthcheck %q; want [CMD, %s, <url>] (the image has no shell)", []string(hc.Test), healthcheckPath)
	default:
		if msg := probeTarget(c, hc.Test[2], env); msg != "" {
			ps.add(name, "healthcheck %s: %s", hc.Test[2], msg)
		}
		if hc.Interval == nil {
			ps.add(name, "healthcheck has no interval (docker's default is 30 s: slow to become healthy)")
		}
	}

	// depends_on: healthy dependencies, including every service its environment names.
	for dep, d := range svc.DependsOn {
		if d.Condition != types.ServiceConditionHealthy {
			ps.add(name, "depends_on %s: condition %q; want service_healthy", dep, d.Condition)
		}
		if t, ok := p.Services[dep]; ok && (t.HealthCheck == nil || t.HealthCheck.Disable) {
			ps.add(name, "depends_on %s, which has no healthcheck", dep)
		}
	}
	for other := range p.Services {
		if other == name {
			continue
		}
		for k, v := range env {
			if namesHost(v, other) {
				if _, ok := svc.DependsOn[other]; !ok {
					ps.add(name, "environment %s reaches %s, which is not in depends_on (condition: service_healthy)", k, other)
				}
				break
			}
		}
	}

	// Each published port is one the component listens on.
	for _, port := range svc.Ports {
		if !listensOn(env, r.Vars[name], port.Target) {
			ps.add(name, "publishes %d/%s, but no *_ADDRESS it reads listens on 0.0.0.0:%d", port.Target, port.Protocol, port.Target)
		}
	}
}

// isListenVar tells the addresses a component listens on from those it dials: a listen
// address has a default on the loopback ("127.0.0.1:9100"), a dial address has none.
func isListenVar(v envconf.Var) bool {
	host, _, err := net.SplitHostPort(v.Default)
	return strings.HasSuffix(v.Name, "ADDRESS") && err == nil && net.ParseIP(host).IsLoopback()
}

func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

// namesHost reports whether value addresses the service by name: "redis:6379",
// "amqp://u:p@rabbitmq:5672/", "tcp(mariadb:3306)", "sip:{number}@carrier-sim:5080".
func namesHost(value, service string) bool {
	re := regexp.MustCompile(`(^|[@/(,])` + regexp.QuoteMeta(service) + `(:\d+|[/)]|$)`)
	return re.MatchString(value)
}

func listensOn(env map[string]string, vars []envconf.Var, port uint32) bool {
	for _, v := range vars {
		if !isListenVar(v) {
			continue
		}
		host, p, err := net.SplitHostPort(env[v.Name])
		if err == nil && wildcard(host) && p == strconv.Itoa(int(port)) {
			return true
		}
	}
	return false
}

func checkPublished(ps *problems, p *types.Project, allowed []Port) {
	seen := map[Port]bool{}
	for name, svc := range p.Services {
		for _, port := range svc.Ports {
			proto := port.Protocol
			if proto == "" {
				proto = "tcp"
			}
			got := Port{Service: name, Target: port.Target, Protocol: proto}
			seen[got] = true
			if !slices.Contains(allowed, got) {
				ps.add(name, "publishes %d/%s; only %s may be published", port.Target, proto, portList(allowed))
			}
		}
		if svc.NetworkMode == "host" {
			ps.add(name, "network_mode host: every port it listens on is on the host")
		}
	}
	for _, want := range allowed {
		if !seen[want] {
			ps.add(want.Service, "does not publish %d/%s", want.Target, want.Protocol)
		}
	}
}

func portList(ports []Port) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
