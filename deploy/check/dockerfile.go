package check

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Dockerfile is a parsed Dockerfile: the ARGs before the first FROM and the build stages.
//
// The parser covers the syntax our Dockerfiles use (line continuations, comments, parser
// directives, flags, the JSON exec form); heredocs are refused rather than misread.
type Dockerfile struct {
	Args   []Instruction // ARG instructions before the first FROM
	Stages []Stage
}

// Stage is one FROM and the instructions after it.
type Stage struct {
	Name         string // the AS name, or ""
	Base         string // the image, as written (ARGs not expanded)
	From         Instruction
	Instructions []Instruction
}

// Instruction is one instruction with its flags (--name=value) split off.
type Instruction struct {
	Line  int    // where it starts, from 1
	Cmd   string // upper case: FROM, RUN, COPY, …
	Flags map[string]string
	// Args are the words after the flags; for the exec form (a JSON array) Exec is true and Args
	// are its elements.
	Args []string
	Exec bool
	// Rest is the text after the flags, as written (continuations joined).
	Rest string
}

// ParseDockerfile reads a Dockerfile.
func ParseDockerfile(r io.Reader) (*Dockerfile, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var (
		df      Dockerfile
		line    int
		start   int
		pending strings.Builder
		inInstr bool
		header  = true // parser directives may only come first
	)
	flush := func() error {
		text := strings.TrimSpace(pending.String())
		pending.Reset()
		inInstr = false
		if text == "" {
			return nil
		}
		in, err := parseInstruction(start, text)
		if err != nil {
			return err
		}
		switch {
		case in.Cmd == "FROM":
			st, err := newStage(in)
			if err != nil {
				return err
			}
			df.Stages = append(df.Stages, st)
		case len(df.Stages) == 0:
			if in.Cmd != "ARG" {
				return fmt.Errorf("line %d: %s before the first FROM (only ARG may come first)", in.Line, in.Cmd)
			}
			df.Args = append(df.Args, in)
		default:
			st := &df.Stages[len(df.Stages)-1]
			st.Instructions = append(st.Instructions, in)
		}
		return nil
	}
	for sc.Scan() {
		line++
		raw := sc.Text()
		trimmed := strings.TrimSpace(raw)
		if header && strings.HasPrefix(trimmed, "#") {
			if k, _, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(trimmed, "#")), "="); ok &&
				strings.EqualFold(strings.TrimSpace(k), "escape") {
				return nil, fmt.Errorf("line %d: the escape directive is not supported", line)
			}
			continue
		}
		if trimmed == "" && !inInstr {
			continue
		}
		header = false
		if strings.HasPrefix(trimmed, "#") {
			continue // a comment, also inside a continued instruction
		}
		if !inInstr {
			start = line
			inInstr = true
		}
		if body, cont := strings.CutSuffix(strings.TrimRight(raw, " \t"), `\`); cont {
			pending.WriteString(body)
			pending.WriteByte(' ')
			continue
		}
		pending.WriteString(raw)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if inInstr {
		return nil, fmt.Errorf("line %d: the file ends inside a continued instruction", start)
	}
	if len(df.Stages) == 0 {
		return nil, fmt.Errorf("no FROM instruction")
	}
	return &df, nil
}

func parseInstruction(line int, text string) (Instruction, error) {
	cmd, rest, _ := strings.Cut(text, " ")
	in := Instruction{Line: line, Cmd: strings.ToUpper(strings.TrimSpace(cmd)), Flags: map[string]string{}}
	if !knownInstruction(in.Cmd) {
		return in, fmt.Errorf("line %d: unknown instruction %q", line, cmd)
	}
	rest = strings.TrimSpace(rest)
	if strings.Contains(rest, "<<") && (in.Cmd == "RUN" || in.Cmd == "COPY") {
		return in, fmt.Errorf("line %d: heredocs are not supported", line)
	}
	for strings.HasPrefix(rest, "--") {
		word, after, _ := strings.Cut(rest, " ")
		k, v, _ := strings.Cut(strings.TrimPrefix(word, "--"), "=")
		in.Flags[k] = v
		rest = strings.TrimSpace(after)
	}
	in.Rest = rest
	if strings.HasPrefix(rest, "[") {
		if err := json.Unmarshal([]byte(rest), &in.Args); err != nil {
			return in, fmt.Errorf("line %d: %s: a JSON array that does not parse: %v", line, in.Cmd, err)
		}
		in.Exec = true
		return in, nil
	}
	in.Args = strings.Fields(rest)
	return in, nil
}

func knownInstruction(cmd string) bool {
	switch cmd {
	case "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
		"MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR":
		return true
	}
	return false
}

func newStage(from Instruction) (Stage, error) {
	st := Stage{From: from}
	switch {
	case len(from.Args) == 1:
	case len(from.Args) == 3 && strings.EqualFold(from.Args[1], "AS"):
		st.Name = from.Args[2]
	default:
		return st, fmt.Errorf("line %d: FROM wants an image and an optional AS name, got %q", from.Line, from.Rest)
	}
	st.Base = from.Args[0]
	return st, nil
}

// Stage finds a stage by its AS name.
func (d *Dockerfile) Stage(name string) (*Stage, bool) {
	for i := range d.Stages {
		if d.Stages[i].Name == name {
			return &d.Stages[i], true
		}
	}
	return nil, false
}

// Final is the last stage: the image.
func (d *Dockerfile) Final() *Stage { return &d.Stages[len(d.Stages)-1] }

// ArgDefault is the default of a global ARG, if it has one.
func (d *Dockerfile) ArgDefault(name string) (string, bool) {
	for _, a := range d.Args {
		for _, w := range a.Args {
			if k, v, ok := strings.Cut(w, "="); ok && k == name {
				return v, true
			}
		}
	}
	return "", false
}

// Env is the stage's ENV settings in order (KEY=value pairs; the legacy "ENV KEY value" form too).
func (s *Stage) Env() [][2]string {
	var out [][2]string
	for _, in := range s.Instructions {
		if in.Cmd != "ENV" {
			continue
		}
		if len(in.Args) >= 2 && !strings.Contains(in.Args[0], "=") {
			out = append(out, [2]string{in.Args[0], strings.Join(in.Args[1:], " ")})
			continue
		}
		for _, w := range in.Args {
			k, v, _ := strings.Cut(w, "=")
			out = append(out, [2]string{k, strings.Trim(v, `"'`)})
		}
	}
	return out
}

// Last is the stage's last instruction of the kind, if any.
func (s *Stage) Last(cmd string) (Instruction, bool) {
	for i := len(s.Instructions) - 1; i >= 0; i-- {
		if s.Instructions[i].Cmd == cmd {
			return s.Instructions[i], true
		}
	}
	return Instruction{}, false
}
