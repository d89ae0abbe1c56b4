// Package check verifies the deployment files of voipbin without running them: the Dockerfiles,
// docker-compose.yml and the Kubernetes manifests under deploy/k8s. This machine (and CI) has no
// container engine, so everything a `docker compose up` or a `kubectl apply` would trip over is
// checked here instead, against the one source of truth for configuration: the variables each
// binary really reads, which it prints with `<binary> vars`.
//
// Each check returns every Problem it finds rather than stopping at the first, like the services'
// configuration loaders; the package's tests run the checks on the repository's real files (so a
// broken file fails `make test`) and on deliberately broken copies under testdata.
package check

import (
	"fmt"

	"voipbin/pkg/envconf"
)

// Component is one binary this repository ships as an image.
type Component struct {
	// Name is the binary, the compose service, the Kubernetes workload and the image
	// voipbin/<Name>.
	Name string
	// Module is the Go module directory, relative to the repository root.
	Module string
	// Dockerfile is the image's Dockerfile, relative to the repository root (the build context).
	Dockerfile string
	// Manager is true for the five managers: they have an admin port (/healthz, /readyz,
	// /metrics) and run in Kubernetes. The carrier simulator belongs to the local stack only.
	Manager bool
}

// Package is the import path of the binary's main package, relative to its module.
func (c Component) Package() string { return "./cmd/" + c.Name }

// Components lists what the repository ships: the five managers and the carrier simulator.
func Components() []Component {
	m := func(svc string) Component {
		return Component{Name: svc + "-manager", Module: "bin-" + svc + "-manager",
			Dockerfile: "bin-" + svc + "-manager/Dockerfile", Manager: true}
	}
	return []Component{m("api"), m("call"), m("billing"), m("rtc"), m("webhook"),
		{Name: "carrier-sim", Module: "bin-rtc-manager", Dockerfile: "bin-rtc-manager/Dockerfile.carrier-sim"}}
}

// Vars maps a component's name to the variables its binary reads (`<binary> vars`).
type Vars map[string][]envconf.Var

// Lookup finds the variable name among the component's.
func (v Vars) Lookup(component, name string) (envconf.Var, bool) {
	for _, x := range v[component] {
		if x.Name == name {
			return x, true
		}
	}
	return envconf.Var{}, false
}

// Known reports whether the component reads name, or the Go runtime does (a deployment may tune
// GOMAXPROCS, GOMEMLIMIT, … of any component).
func (v Vars) Known(component, name string) bool {
	if _, ok := v.Lookup(component, name); ok {
		return true
	}
	switch name {
	case "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG", "GOTRACEBACK":
		return true
	}
	return false
}

// Problem is one thing wrong in a deployment file.
type Problem struct {
	File   string // relative to the repository root
	Object string // the compose service, "Kind/name" of a manifest, or the Dockerfile stage
	Msg    string
}

func (p Problem) String() string {
	if p.Object == "" {
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", p.File, p.Object, p.Msg)
}

// problems collects Problems about one file.
type problems struct {
	file string
	list []Problem
}

func (ps *problems) add(object, format string, args ...any) {
	ps.list = append(ps.list, Problem{File: ps.file, Object: object, Msg: fmt.Sprintf(format, args...)})
}
