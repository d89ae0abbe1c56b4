package check

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildRes != nil && buildRes.dir != "" {
		_ = os.RemoveAll(buildRes.dir)
	}
	os.Exit(code)
}

// repoRoot is the repository root: two directories above this file.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// built is the result of building every component's image binaries once per test process, the
// way its Dockerfile does (BuildFile), and asking each binary for its variables.
type built struct {
	dir        string // the temporary directory of everything built; TestMain removes it
	ctx        *BuildContext
	dockerfile map[string]*Dockerfile // by component
	binary     map[string]string      // component -> path of the binary
	health     map[string]string      // component -> path of the healthcheck its image has
	vars       Vars
	errs       []string
}

var (
	buildOnce sync.Once
	buildRes  *built
)

// build replays every Dockerfile's build stages (a minute or so the first time: each binary is
// built static with -trimpath, which the ordinary build cache does not share) and reads
// `<binary> vars`. Any failure fails every test that needs the result.
func build(t *testing.T) *built {
	t.Helper()
	buildOnce.Do(func() {
		root := repoRoot(t)
		b := &built{dockerfile: map[string]*Dockerfile{}, binary: map[string]string{},
			health: map[string]string{}, vars: Vars{}}
		buildRes = b
		var err error
		if b.ctx, err = NewBuildContext(root); err != nil {
			b.errs = append(b.errs, err.Error())
			return
		}
		dir, err := os.MkdirTemp("", "deploycheck-build")
		if err != nil {
			b.errs = append(b.errs, err.Error())
			return
		}
		b.dir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		for _, c := range Components() {
			f, err := os.Open(filepath.Join(root, c.Dockerfile))
			if err != nil {
				b.errs = append(b.errs, err.Error())
				continue
			}
			df, err := ParseDockerfile(f)
			f.Close()
			if err != nil {
				b.errs = append(b.errs, c.Dockerfile+": "+err.Error())
				continue
			}
			b.dockerfile[c.Name] = df
			out := filepath.Join(dir, c.Name)
			bin, err := BuildFile(ctx, b.ctx, df, c.Dockerfile, binDir+c.Name, filepath.Join(out, "bin"))
			if err != nil {
				b.errs = append(b.errs, err.Error())
				continue
			}
			b.binary[c.Name] = bin
			hc, err := BuildFile(ctx, b.ctx, df, c.Dockerfile, healthcheckPath, filepath.Join(out, "healthcheck"))
			if err != nil {
				b.errs = append(b.errs, err.Error())
			} else {
				b.health[c.Name] = hc
			}
			vars, err := ReadVars(ctx, bin)
			if err != nil {
				b.errs = append(b.errs, err.Error())
				continue
			}
			b.vars[c.Name] = vars
		}
	})
	if len(buildRes.errs) > 0 {
		t.Fatalf("building the images' binaries as their Dockerfiles do:\n%s", strings.Join(buildRes.errs, "\n"))
	}
	return buildRes
}

// wantProblems fails unless some problem contains each of wants (and, with no wants, unless
// there are none).
func wantProblems(t *testing.T, got []Problem, wants ...string) {
	t.Helper()
	if len(wants) == 0 {
		for _, p := range got {
			t.Errorf("problem: %s", p)
		}
		return
	}
	for _, w := range wants {
		found := false
		for _, p := range got {
			if strings.Contains(p.String(), w) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no problem mentions %q; got %d:", w, len(got))
			for _, p := range got {
				t.Logf("  %s", p)
			}
		}
	}
}

// mutate returns s with old replaced by new, failing if old is not in s exactly once (a
// mutation that no longer applies must not turn into a test that cannot fail).
func mutate(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("the mutation's text %q occurs %d times; want once", old, n)
	}
	return strings.Replace(s, old, new, 1)
}
