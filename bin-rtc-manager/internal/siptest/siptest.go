// Package siptest runs real SIP peers for tests: sipp with a scenario from testdata/sipp on a
// free loopback port, as a child process that is killed when the test ends.
package siptest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Sipp is a running sipp.
type Sipp struct {
	// Addr is the host:port sipp listens on.
	Addr string
	dir  string // working directory, where sipp writes its logs
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Scenario is the path of a scenario file in bin-rtc-manager/testdata/sipp.
func Scenario(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "sipp", name)
}

// FreePort is a loopback port that was free for both UDP and TCP a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		_ = u.Close()
		if err == nil {
			_ = l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// StartSipp runs `sipp -sf scenario` answering on a free port (one call unless args say
// otherwise); tcp selects the TCP transport. It waits until sipp has bound its port.
func StartSipp(t testing.TB, scenario string, tcp bool, args ...string) *Sipp {
	t.Helper()
	return startSippRetrying(t, scenario, tcp, false, args...)
}

// StartSippCapture is StartSipp with every SIP message sipp sends or receives logged, for
// Messages to read.
func StartSippCapture(t testing.TB, scenario string, tcp bool, args ...string) *Sipp {
	t.Helper()
	return startSippRetrying(t, scenario, tcp, true, args...)
}

// Messages is the log of the SIP messages sipp sent and received so far (StartSippCapture), as
// they were on the wire.
func (s *Sipp) Messages(t testing.TB) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(s.dir, "*_messages.log"))
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return string(all)
}

func startSippRetrying(t testing.TB, scenario string, tcp, capture bool, args ...string) *Sipp {
	t.Helper()
	if _, err := exec.LookPath("sipp"); err != nil {
		t.Fatal("sipp not found: install the Debian package sip-tester (deploy/local/services.sh sipp)")
	}
	// The free port may be taken again before sipp binds it: try a few.
	for attempt := 1; ; attempt++ {
		s, ok := startSipp(t, scenario, tcp, capture, attempt == 3, args...)
		if ok {
			return s
		}
	}
}

func startSipp(t testing.TB, scenario string, tcp, capture, last bool, args ...string) (*Sipp, bool) {
	t.Helper()
	port := FreePort(t)
	full := []string{"-sf", Scenario(scenario), "-i", "127.0.0.1", "-p", strconv.Itoa(port), "-nostdin", "-timeout", "90s", "-m", "1",
		"-mp", strconv.Itoa(FreePort(t))}
	if tcp {
		full = append(full, "-t", "t1")
	}
	full = append(full, args...)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sipp{Addr: "127.0.0.1:" + strconv.Itoa(port), out: &syncBuffer{}, done: make(chan struct{})}
	s.cmd = exec.CommandContext(ctx, "sipp", full...)
	s.cmd.Dir = t.TempDir() // sipp writes its logs into the working directory
	if d := os.Getenv("SIPP_TRACE_DIR"); d != "" {
		s.cmd.Dir = d
		s.cmd.Args = append(s.cmd.Args, "-trace_msg")
	} else if capture {
		s.cmd.Args = append(s.cmd.Args, "-trace_msg")
	}
	s.dir = s.cmd.Dir
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start sipp: %v", err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if bound(tcp, port) {
			return s, true
		}
		select {
		case <-s.done:
			if !last {
				return nil, false
			}
			t.Fatalf("sipp exited before it listened: %v\n%s", s.err, s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sipp did not listen on %d\n%s", port, s.out.String())
			return nil, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func bound(tcp bool, port int) bool {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if tcp {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return true // someone holds it: sipp
	}
	_ = u.Close()
	return false
}

// Wait waits until sipp exits and fails the test unless its scenario completed (exit code 0).
func (s *Sipp) Wait(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Fatalf("sipp still running after %s\n%s", timeout, s.out.String())
	}
	var ee *exec.ExitError
	if s.err != nil {
		if errors.As(s.err, &ee) {
			t.Fatalf("sipp scenario failed (exit %d)\n%s", ee.ExitCode(), s.out.String())
		}
		t.Fatalf("sipp: %v", s.err)
	}
}
