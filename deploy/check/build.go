package check

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/mattn/go-shellwords"

	"voipbin/pkg/envconf"
)

// outDir is the image directory our build stages write their binaries to; the replay maps it
// into its own directory.
const outDir = "/out/"

// BuildFile makes a file of the final image (a binary under /usr/local/bin/) the way the
// Dockerfile does, without docker: the stage that the final image copies it from is laid out
// from the build context (exactly the files docker would send, see Materialize), and that
// stage's RUN commands are replayed in order, in its WORKDIR, with /out/ standing for dir/out/.
// Only RUNs made of `cd <relative dir>` and `go …` commands joined by && can be replayed;
// anything else is an error, never run. name is the Dockerfile's name in errors. It returns the
// path of the file made.
func BuildFile(ctx context.Context, bc *BuildContext, df *Dockerfile, name, imagePath, dir string) (string, error) {
	var src, from string
	for _, in := range df.Final().Instructions {
		if in.Cmd == "COPY" && in.Flags["from"] != "" && len(in.Args) == 2 && in.Args[1] == imagePath {
			src, from = in.Args[0], in.Flags["from"]
		}
	}
	if src == "" {
		return "", fmt.Errorf("%s: the final image copies no %s from a build stage", name, imagePath)
	}
	st, ok := df.Stage(from)
	if !ok {
		return "", fmt.Errorf("%s: no stage %q", name, from)
	}
	if !strings.HasPrefix(src, outDir) {
		return "", fmt.Errorf("%s: %s comes from %s; the replay knows only %s", name, imagePath, src, outDir)
	}
	fsRoot := filepath.Join(dir, "fs")
	args := map[string]string{"TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH,
		"BUILDPLATFORM": runtime.GOOS + "/" + runtime.GOARCH}
	for _, in := range df.Args {
		for _, w := range in.Args {
			if k, v, ok := strings.Cut(w, "="); ok {
				args[k] = v
			}
		}
	}
	run := func(in Instruction, workdir string) error {
		return replay(ctx, in, filepath.Join(fsRoot, filepath.FromSlash(workdir)), dir, args)
	}
	if _, err := bc.materialize(st, fsRoot, run); err != nil {
		return "", fmt.Errorf("%s: stage %s: %w", name, from, err)
	}
	bin := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(src, "/")))
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%s: stage %s made no %s", name, from, src)
	}
	return bin, nil
}

// replay runs one RUN instruction: `[VAR=value…] cd DIR` and `[VAR=value…] go …` commands
// joined by &&, in cwd, with args (the build's ARGs) expanded.
func replay(ctx context.Context, in Instruction, cwd, dir string, args map[string]string) error {
	for _, part := range strings.Split(in.Rest, "&&") {
		p := shellwords.NewParser()
		p.ParseEnv = true
		p.Getenv = func(k string) string { return args[k] }
		env, words, err := p.ParseWithEnvs(strings.TrimSpace(part))
		if err != nil || p.Position != -1 {
			return fmt.Errorf("line %d: RUN %q: only commands joined by && can be replayed", in.Line, part)
		}
		if len(words) == 0 {
			return fmt.Errorf("line %d: RUN: an empty command", in.Line)
		}
		if words[0] != "cd" && words[0] != "go" {
			return fmt.Errorf("line %d: RUN %s: only cd and go commands can be replayed", in.Line, words[0])
		}
		for i, w := range words {
			switch {
			case strings.HasPrefix(w, outDir):
				words[i] = filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(w, "/")))
			case path.IsAbs(w):
				return fmt.Errorf("line %d: RUN %s: the replay knows no image path but %s", in.Line, w, outDir)
			}
		}
		switch words[0] {
		case "cd":
			if len(words) != 2 {
				return fmt.Errorf("line %d: RUN cd wants one relative directory", in.Line)
			}
			cwd = filepath.Join(cwd, filepath.FromSlash(words[1]))
		case "go":
			cmd := exec.CommandContext(ctx, goCommand(), words[1:]...)
			cmd.Dir = cwd
			cmd.Env = append(os.Environ(), env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("line %d: RUN %s: %v\n%s", in.Line, strings.TrimSpace(part), err, out)
			}
		}
	}
	return nil
}

// goCommand is the go command to replay builds with: the one on PATH, else $GOROOT/bin/go
// (`go test` sets GOROOT for the tests it runs).
func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}

// ReadVars runs `<binary> vars` and decodes the variables it lists.
func ReadVars(ctx context.Context, binary string) ([]envconf.Var, error) {
	cmd := exec.CommandContext(ctx, binary, "vars")
	cmd.Env = []string{} // what it reads must not depend on this process's environment
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s vars: %v: %s", filepath.Base(binary), err, strings.TrimSpace(stderr.String()))
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.DisallowUnknownFields()
	var vars []envconf.Var
	if err := dec.Decode(&vars); err != nil {
		return nil, fmt.Errorf("%s vars: not a JSON list of variables: %v", filepath.Base(binary), err)
	}
	if len(vars) == 0 {
		return nil, errors.New(filepath.Base(binary) + " vars: an empty list")
	}
	return vars, nil
}
