package check

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// BuildContext is the repository root as docker sends it: the files .dockerignore lets through.
// It uses the matcher docker itself uses, so "included" here means included there.
type BuildContext struct {
	Root    string
	matcher *patternmatcher.PatternMatcher
}

// NewBuildContext reads root/.dockerignore (a missing file excludes nothing).
func NewBuildContext(root string) (*BuildContext, error) {
	var patterns []string
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	switch {
	case err == nil:
		defer f.Close()
		if patterns, err = ignorefile.ReadAll(f); err != nil {
			return nil, fmt.Errorf(".dockerignore: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	m, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	return &BuildContext{Root: root, matcher: m}, nil
}

// Included reports whether the file (slash-separated, relative to the root) is sent to docker.
func (c *BuildContext) Included(rel string) bool {
	excluded, err := c.matcher.MatchesOrParentMatches(path.Clean(rel))
	return err == nil && !excluded
}

// Files lists the included regular files at or under rel (slash-separated, relative to the
// root), or fails if rel does not exist.
func (c *BuildContext) Files(rel string) ([]string, error) {
	rel = path.Clean(strings.TrimPrefix(rel, "./"))
	var out []string
	err := filepath.WalkDir(filepath.Join(c.Root, filepath.FromSlash(rel)), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, err := filepath.Rel(c.Root, p)
		if err != nil {
			return err
		}
		r = filepath.ToSlash(r)
		if d.IsDir() {
			// Docker walks into excluded directories only when an exception may re-include
			// something below them; checking every file is the simple equivalent.
			return nil
		}
		if d.Type().IsRegular() && c.Included(r) {
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Materialize lays out what a stage's COPY instructions from the context put in the image,
// under dst standing for the image's "/": WORKDIR and COPY are followed in order (RUN is not
// run), and the directory of the last WORKDIR is returned. Sources must be plain paths (no
// globs), as ours are.
func (c *BuildContext) Materialize(st *Stage, dst string) (string, error) {
	return c.materialize(st, dst, nil)
}

// materialize is Materialize calling run, when not nil, for each RUN with the image's working
// directory at that point.
func (c *BuildContext) materialize(st *Stage, dst string, run func(in Instruction, workdir string) error) (string, error) {
	workdir := "/"
	for _, in := range st.Instructions {
		switch in.Cmd {
		case "RUN":
			if run != nil {
				if err := run(in, workdir); err != nil {
					return "", err
				}
			}
		case "WORKDIR":
			if len(in.Args) != 1 {
				return "", fmt.Errorf("line %d: WORKDIR wants one path", in.Line)
			}
			workdir = inImage(workdir, in.Args[0])
		case "COPY", "ADD":
			if _, ok := in.Flags["from"]; ok {
				continue
			}
			if len(in.Args) < 2 {
				return "", fmt.Errorf("line %d: %s wants a source and a destination", in.Line, in.Cmd)
			}
			srcs, dest := in.Args[:len(in.Args)-1], in.Args[len(in.Args)-1]
			destDir := strings.HasSuffix(dest, "/") || len(srcs) > 1
			target := inImage(workdir, dest)
			for _, src := range srcs {
				if strings.ContainsAny(src, "*?[") {
					return "", fmt.Errorf("line %d: %s %s: globs are not supported here", in.Line, in.Cmd, src)
				}
				if err := c.copy(src, target, destDir, dst); err != nil {
					return "", fmt.Errorf("line %d: %s %s: %w", in.Line, in.Cmd, src, err)
				}
			}
		}
	}
	return filepath.Join(dst, filepath.FromSlash(workdir)), nil
}

// inImage resolves p against the image's working directory.
func inImage(workdir, p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(workdir, p)
}

// copy follows COPY's rules: a directory's contents go into the target; a file goes to the
// target, or into it when the target is a directory.
func (c *BuildContext) copy(src, target string, destDir bool, dst string) error {
	src = path.Clean(strings.TrimPrefix(src, "./"))
	if strings.HasPrefix(src, "../") || src == ".." {
		return errors.New("is outside the build context")
	}
	info, err := os.Stat(filepath.Join(c.Root, filepath.FromSlash(src)))
	if err != nil {
		return fmt.Errorf("not in the build context: %w", err)
	}
	files, err := c.Files(src)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("everything in it is excluded by .dockerignore")
	}
	for _, f := range files {
		var to string
		switch {
		case info.IsDir():
			rel := strings.TrimPrefix(strings.TrimPrefix(f, src), "/")
			if src == "." {
				rel = f
			}
			to = path.Join(target, rel)
		case destDir:
			to = path.Join(target, path.Base(f))
		default:
			to = target
		}
		if err := copyFile(filepath.Join(c.Root, filepath.FromSlash(f)), filepath.Join(dst, filepath.FromSlash(to))); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
