package check

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDockerfile(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string
		check   func(t *testing.T, df *Dockerfile)
	}{
		{
			name: "stages, continuations, comments, flags, exec form",
			in: "# syntax=docker/dockerfile:1\n# a comment\nARG GO_VERSION=1.26\n\n" +
				"FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build\n" +
				"RUN --mount=type=cache,target=/c \\\n  # inside\n  go build \\\n\t-o /out/x ./cmd/x\n" +
				"FROM scratch\nCOPY --from=build /out/x /usr/local/bin/x\nENV A=1 B=\"two\"\nENV C three words\n" +
				"ENTRYPOINT [\"/usr/local/bin/x\", \"serve\"]\n",
			check: func(t *testing.T, df *Dockerfile) {
				if v, _ := df.ArgDefault("GO_VERSION"); v != "1.26" {
					t.Errorf("GO_VERSION = %q", v)
				}
				if len(df.Stages) != 2 || df.Stages[0].Name != "build" || df.Stages[0].Base != "golang:${GO_VERSION}" || df.Final().Base != "scratch" {
					t.Fatalf("stages = %+v", df.Stages)
				}
				run := df.Stages[0].Instructions[0]
				if run.Flags["mount"] != "type=cache,target=/c" || strings.Join(strings.Fields(run.Rest), " ") != "go build -o /out/x ./cmd/x" || run.Line != 6 {
					t.Errorf("RUN = %+v", run)
				}
				if got, ok := BuildCommand(&df.Stages[0], "/out/x"); !ok || got.Line != 6 {
					t.Errorf("BuildCommand = %+v, %v", got, ok)
				}
				env := df.Final().Env()
				if len(env) != 3 || env[0] != [2]string{"A", "1"} || env[1] != [2]string{"B", "two"} || env[2] != [2]string{"C", "three words"} {
					t.Errorf("Env = %v", env)
				}
				e, _ := df.Final().Last("ENTRYPOINT")
				if !e.Exec || strings.Join(e.Args, " ") != "/usr/local/bin/x serve" {
					t.Errorf("ENTRYPOINT = %+v", e)
				}
			},
		},
		{name: "no FROM", in: "ARG A=1\n", wantErr: "no FROM"},
		{name: "instruction before FROM", in: "RUN true\nFROM scratch\n", wantErr: "before the first FROM"},
		{name: "unknown instruction", in: "FROM scratch\nCOPPY a b\n", wantErr: `unknown instruction "COPPY"`},
		{name: "bad exec form", in: "FROM scratch\nENTRYPOINT [\"/x\",\n", wantErr: "JSON array"},
		{name: "ends inside a continuation", in: "FROM scratch\nRUN a \\\n", wantErr: "ends inside"},
		{name: "heredoc", in: "FROM scratch\nRUN <<EOF\nx\nEOF\n", wantErr: "heredocs"},
		{name: "bad FROM", in: "FROM a b\n", wantErr: "FROM wants"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			df, err := ParseDockerfile(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, df)
		})
	}
}

// TestDockerfiles checks every image's Dockerfile, after its build stages were replayed to make
// its binaries (build), and runs each image's healthcheck binary against a live target.
func TestDockerfiles(t *testing.T) {
	b := build(t)
	for _, c := range Components() {
		t.Run(c.Name, func(t *testing.T) {
			wantProblems(t, CheckDockerfile(b.ctx, c, b.dockerfile[c.Name], b.vars))

			ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/readyz" {
					http.NotFound(w, r)
				}
			}))
			defer ok.Close()
			if out, err := exec.Command(b.health[c.Name], ok.URL+"/readyz").CombinedOutput(); err != nil {
				t.Errorf("the image's healthcheck against a ready server: %v: %s", err, out)
			}
			if err := exec.Command(b.health[c.Name], ok.URL+"/elsewhere").Run(); err == nil {
				t.Error("the image's healthcheck passed on a 404")
			}
		})
	}
}

// TestCheckDockerfileFindsProblems breaks the real api-manager Dockerfile one way at a time.
func TestCheckDockerfileFindsProblems(t *testing.T) {
	b := build(t)
	root := repoRoot(t)
	c := Components()[0]
	if c.Name != "api-manager" {
		t.Fatalf("the first component is %s", c.Name)
	}
	orig, err := os.ReadFile(filepath.Join(root, c.Dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, old, new, want string
	}{
		{"final image not scratch", "FROM scratch", "FROM debian:bookworm-slim", "want scratch"},
		{"user by name", "USER 65534:65534", "USER nobody", "numeric uid:gid"},
		{"root user", "USER 65534:65534", "USER 0:0", "runs as root"},
		{"no user", "USER 65534:65534\n", "", "no USER"},
		{"shell-form entrypoint", `ENTRYPOINT ["/usr/local/bin/api-manager"]`, "ENTRYPOINT /usr/local/bin/api-manager", "exec form"},
		{"cgo", "CGO_ENABLED=0 GOWORK=off GOOS=$TARGETOS GOARCH=$TARGETARCH \\\n\tgo build -trimpath -ldflags='-s -w' -o /out/api-manager",
			"GOWORK=off GOOS=$TARGETOS GOARCH=$TARGETARCH \\\n\tgo build -trimpath -ldflags='-s -w' -o /out/api-manager", "lacks CGO_ENABLED=0"},
		{"no trimpath", "go build -trimpath -ldflags='-s -w' -o /out/api-manager", "go build -ldflags='-s -w' -o /out/api-manager", "lacks -trimpath"},
		{"wrong package", "-o /out/api-manager ./cmd/api-manager", "-o /out/api-manager ./cmd/call-manager", "lacks ./cmd/api-manager"},
		{"binary from nowhere", "COPY --from=build /out/api-manager /usr/local/bin/api-manager", "COPY --from=builder /out/api-manager /usr/local/bin/api-manager", "no stage of that name"},
		{"missing source", "COPY pkg/ pkg/", "COPY pkgs/ pkg/", "COPY pkgs/: not in the build context"},
		{"source excluded by .dockerignore", "COPY pkg/ pkg/", "COPY pkg/ pkg/\nCOPY e2e/ e2e/", "COPY e2e/: everything in it is excluded"},
		{"context in the final image", "USER 65534:65534", "COPY bin-api-manager/go.mod /go.mod\nUSER 65534:65534", "from the build context into the final image"},
		{"healthcheck on the wrong port", "http://127.0.0.1:9100/readyz", "http://127.0.0.1:9999/readyz", "want http://127.0.0.1:9100/readyz"},
		{"healthcheck by shell", `CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/readyz"]`, "CMD curl -f http://127.0.0.1:9100/readyz", "HEALTHCHECK"},
		{"healthcheck binary missing", "COPY --from=healthcheck /out/healthcheck /usr/local/bin/healthcheck\n", "", "which the image does not have"},
		{"no healthcheck", "HEALTHCHECK --interval=10s", "# HEALTHCHECK --interval=10s", "no HEALTHCHECK"},
		{"listens on loopback", "ENV HTTP_ADDRESS=0.0.0.0:8080", "ENV HTTP_ADDRESS=127.0.0.1:8080", "listen on 0.0.0.0"},
		{"port not exposed", "EXPOSE 8080 9100", "EXPOSE 9100", "port 8080 is not EXPOSEd"},
		{"unknown variable", "ENV HTTP_ADDRESS=0.0.0.0:8080", "ENV HTTP_ADDR=0.0.0.0:8080", "ENV HTTP_ADDR: api-manager does not read it"},
		{"go version", "ARG GO_VERSION=1.27.3", "ARG GO_VERSION=1.26", "ARG GO_VERSION=1.26, but bin-api-manager/go.mod says go 1.27.3"},
		{"go patch release", "ARG GO_VERSION=1.27.3", "ARG GO_VERSION=1.27", "ARG GO_VERSION=1.27, but bin-api-manager/go.mod says go 1.27.3"},
		{"RUN in the final image", "USER 65534:65534", "RUN mkdir /data\nUSER 65534:65534", "RUN in the final image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			df, err := ParseDockerfile(strings.NewReader(mutate(t, string(orig), tt.old, tt.new)))
			if err != nil {
				t.Fatal(err)
			}
			wantProblems(t, CheckDockerfile(b.ctx, c, df, b.vars), tt.want)
		})
	}
}

func TestCheckDockerfileSingleStage(t *testing.T) {
	f, err := os.Open("testdata/Dockerfile.single-stage")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	df, err := ParseDockerfile(f)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := NewBuildContext(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	got := CheckDockerfile(bc, Components()[1], df, nil)
	wantProblems(t, got, "want a multi-stage build", "want scratch", "no USER", "no HEALTHCHECK", "the final image has no /usr/local/bin/call-manager")
}

// TestReplayRefuses shows that BuildFile runs only cd and go commands, never anything else a
// Dockerfile's RUN might say, and reports a failing go build with its output.
func TestReplayRefuses(t *testing.T) {
	bc, err := NewBuildContext(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, run, want string }{
		{"another command", "RUN touch /tmp/x && go build -o /out/x .", "only cd and go commands"},
		{"a pipe", "RUN go version | cat && go build -o /out/x .", "only commands joined by &&"},
		{"an absolute path", "RUN cd /etc && go build -o /out/x .", "knows no image path"},
		{"a failing build", "RUN go build -o /out/x ./no/such/package", "go build -o"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "FROM golang AS build\nWORKDIR /src/pkg\nCOPY pkg/ ./\n" + tt.run + "\nFROM scratch\nCOPY --from=build /out/x /usr/local/bin/x\n"
			df, err := ParseDockerfile(strings.NewReader(src))
			if err != nil {
				t.Fatal(err)
			}
			_, err = BuildFile(context.Background(), bc, df, "test", "/usr/local/bin/x", t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestBuildContext(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		".dockerignore":        "*\n!src\n**/*_test.go\nsrc/secret\n",
		"src/a.go":             "package a",
		"src/a_test.go":        "package a",
		"src/sub/b.go":         "package sub",
		"src/secret/key":       "k",
		"README.md":            "r",
		"other/c.go":           "package c",
		"src/sub/testdata/t.x": "t",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bc, err := NewBuildContext(root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := bc.Files("src")
	if err != nil {
		t.Fatal(err)
	}
	want := "src/a.go src/sub/b.go src/sub/testdata/t.x"
	if strings.Join(got, " ") != want {
		t.Errorf("Files(src) = %v, want %s", got, want)
	}
	for _, tt := range []struct {
		path string
		want bool
	}{{"src/a.go", true}, {"src/a_test.go", false}, {"README.md", false}, {"other/c.go", false}, {"src/secret/key", false}} {
		if got := bc.Included(tt.path); got != tt.want {
			t.Errorf("Included(%s) = %v, want %v", tt.path, got, tt.want)
		}
	}
	if _, err := bc.Files("nope"); err == nil {
		t.Error("Files of a missing path succeeded")
	}

	df, err := ParseDockerfile(strings.NewReader("FROM x\nWORKDIR /w\nCOPY src/ s/\nCOPY src/a.go one.go\nCOPY src/sub/b.go src/a.go /flat/\nWORKDIR s\n"))
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	wd, err := bc.Materialize(&df.Stages[0], dst)
	if err != nil {
		t.Fatal(err)
	}
	if wd != filepath.Join(dst, "w/s") {
		t.Errorf("workdir = %s", wd)
	}
	for _, p := range []string{"w/s/a.go", "w/s/sub/b.go", "w/one.go", "flat/b.go", "flat/a.go"} {
		if _, err := os.Stat(filepath.Join(dst, p)); err != nil {
			t.Errorf("Materialize made no %s", p)
		}
	}
	for _, p := range []string{"w/s/a_test.go", "w/s/secret"} {
		if _, err := os.Stat(filepath.Join(dst, p)); err == nil {
			t.Errorf("Materialize copied the excluded %s", p)
		}
	}
}

// TestHealthcheckTargets covers the probe target rule for both kinds of component.
func TestHealthcheckTargets(t *testing.T) {
	mgr, sim := Components()[0], Components()[5]
	tests := []struct {
		c      Component
		target string
		env    map[string]string
		ok     bool
	}{
		{mgr, "http://127.0.0.1:9100/readyz", map[string]string{"ADMIN_ADDRESS": "0.0.0.0:9100"}, true},
		{mgr, "http://127.0.0.1:9100/healthz", map[string]string{"ADMIN_ADDRESS": "0.0.0.0:9100"}, false},
		{mgr, "http://localhost:9100/readyz", map[string]string{"ADMIN_ADDRESS": "0.0.0.0:9100"}, false},
		{mgr, "http://127.0.0.1:9100/readyz", map[string]string{}, false},
		{sim, "tcp://127.0.0.1:5080", map[string]string{"CARRIER_LISTEN_ADDRESS": "0.0.0.0:5080"}, true},
		{sim, "http://127.0.0.1:5080/readyz", map[string]string{"CARRIER_LISTEN_ADDRESS": "0.0.0.0:5080"}, false},
	}
	for _, tt := range tests {
		msg := probeTarget(tt.c, tt.target, tt.env)
		if (msg == "") != tt.ok {
			t.Errorf("probeTarget(%s, %s, %v) = %q, want ok=%v", tt.c.Name, tt.target, tt.env, msg, tt.ok)
		}
	}
}
