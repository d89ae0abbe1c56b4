package check

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// runsGo matches a shell or make line that runs the go command.
var runsGo = regexp.MustCompile(`(?m)(^|[\s;&|(])go (build|test|run|install|vet|list|mod|env|tool|generate)\b`)

// TestToolchainPinned keeps one Go release everywhere: every go.mod and go.work names the go.work
// release, and the Makefile, .ci/run and every shell script that runs go export GOTOOLCHAIN to it,
// so an older installed go command fetches that release instead of building with its own standard
// library (or refusing, where it is set to GOTOOLCHAIN=local).
func TestToolchainPinned(t *testing.T) {
	root := repoRoot(t)
	work, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	m := goDirective.FindSubmatch(work)
	if m == nil {
		t.Fatal("go.work has no go directive")
	}
	want := string(m[1])
	if strings.Count(want, ".") != 2 {
		t.Errorf("go.work says go %s: name the patch release (go 1.27.3), the one without known vulnerabilities", want)
	}
	exportLine := regexp.MustCompile(`(?m)^\s*export GOTOOLCHAIN\s*:?=\s*go` + regexp.QuoteMeta(want) + `(\s|$)`)

	var scripts []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if name := d.Name(); rel != "." && (strings.HasPrefix(name, ".") && name != ".ci" || name == "bin" || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.Name() == "go.mod":
			mod, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if got := goDirective.FindSubmatch(mod); got == nil || string(got[1]) != want {
				t.Errorf("%s: want `go %s`, the go.work release", rel, want)
			}
		case rel == "Makefile" || rel == filepath.Join(".ci", "run") || strings.HasSuffix(rel, ".sh"):
			scripts = append(scripts, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, rel := range scripts {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !runsGo.Match(b) && rel != "Makefile" && rel != filepath.Join(".ci", "run") {
			continue
		}
		checked++
		if !exportLine.Match(b) {
			t.Errorf("%s runs go but does not `export GOTOOLCHAIN=go%s`", rel, want)
		}
	}
	if checked < 3 {
		t.Errorf("checked only %d scripts; the walk is missing the Makefile, .ci/run or deploy/local", checked)
	}
}
