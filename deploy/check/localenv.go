package check

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

var (
	exportLine = regexp.MustCompile(`(?m)^export ([A-Z_ ]+)$`)
	procEnv    = regexp.MustCompile(`(?s)\nproc_env\(\) \{\n(.*?)\n\}\n`)
	caseArm    = regexp.MustCompile(`(?s)\n\s*([a-z-]+)\)(.*?);;`)
	assignment = regexp.MustCompile(`"([A-Z][A-Z0-9_]*)=`)
)

// LocalEnv reads which variables `make run` gives each component: the names deploy/local/env.sh
// exports to every process, the ones deploy/local/run.sh's proc_env adds to all, and the ones
// its case arm adds to that component (arm "api" is api-manager, "carrier-sim" carrier-sim).
// It fails when it cannot find them, so that a change of those scripts is noticed here.
func LocalEnv(root string, components []Component) (map[string][]string, error) {
	envSh, err := os.ReadFile(filepath.Join(root, "deploy/local/env.sh"))
	if err != nil {
		return nil, err
	}
	runSh, err := os.ReadFile(filepath.Join(root, "deploy/local/run.sh"))
	if err != nil {
		return nil, err
	}
	var common []string
	for _, m := range exportLine.FindAllStringSubmatch(string(envSh), -1) {
		common = append(common, strings.Fields(m[1])...)
	}
	if len(common) == 0 {
		return nil, fmt.Errorf("deploy/local/env.sh: no `export NAME …` line")
	}
	body := procEnv.FindStringSubmatch(string(runSh))
	if body == nil {
		return nil, fmt.Errorf("deploy/local/run.sh: no proc_env() function")
	}
	before, arms, ok := strings.Cut(body[1], "case $1 in")
	if !ok {
		return nil, fmt.Errorf("deploy/local/run.sh: proc_env has no `case $1 in`")
	}
	for _, m := range assignment.FindAllStringSubmatch(before, -1) {
		common = append(common, m[1])
	}
	out := map[string][]string{}
	for _, m := range caseArm.FindAllStringSubmatch(arms, -1) {
		name := m[1]
		if !hasComponent(components, name) && hasComponent(components, name+"-manager") {
			name += "-manager"
		}
		if !hasComponent(components, name) {
			return nil, fmt.Errorf("deploy/local/run.sh: proc_env has an arm %q for no component", m[1])
		}
		for _, a := range assignment.FindAllStringSubmatch(m[2], -1) {
			out[name] = append(out[name], a[1])
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("deploy/local/run.sh: proc_env's case has no arm setting variables")
	}
	for _, c := range components {
		out[c.Name] = append(out[c.Name], common...)
	}
	return out, nil
}

func hasComponent(components []Component, name string) bool {
	for _, c := range components {
		if c.Name == name {
			return true
		}
	}
	return false
}
