// Package e2e runs the whole platform as a user gets it — the five managers and the carrier
// simulator built from this repository and started as real processes against the real MariaDB,
// Redis and RabbitMQ — and drives it from the outside: the REST API, the WebSocket, webhooks, SIP.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// repoRoot is the repository root (this file's parent directory).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// build compiles every binary once per test process.
func build(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "voipbin-e2e-bin")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/",
			"./bin-api-manager/cmd/...", "./bin-call-manager/cmd/...", "./bin-billing-manager/cmd/...",
			"./bin-rtc-manager/cmd/...", "./bin-webhook-manager/cmd/...")
		cmd.Dir = repoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// freePort reserves a loopback port free for both TCP and UDP.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// Stack is a running platform.
type Stack struct {
	API         string // http://127.0.0.1:port
	AdminUser   string
	AdminPass   string
	SIPAddress  string
	CarrierAddr string
	Env         map[string]string
	mu          sync.Mutex // guards procs and logs: the fault test restarts services from two goroutines
	procs       map[string]*proc
	logDir      string
	logs        map[string]logSink // by service, kept across restarts
	t           testing.TB
}

type proc struct {
	name  string
	cmd   *exec.Cmd
	admin string
	log   logSink
	done  chan struct{}
}

// logSink keeps what a service prints: in memory, or in a file when the stack has a LogDir.
type logSink interface {
	io.Writer
	String() string
}

// fileLog appends a service's output to a file (kept across its restarts) and reads it back.
type fileLog struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

func (l *fileLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

func (l *fileLog) String() string {
	b, _ := os.ReadFile(l.path)
	return string(b)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartStack builds and starts every service on fresh ports and a fresh database of the machine's
// MariaDB (and its RabbitMQ and Redis), waits until all are ready, and stops them when the test
// ends (printing their logs if it failed).
func StartStack(t testing.TB, extraEnv map[string]string) *Stack {
	t.Helper()
	return StartStackOn(t, StackOptions{
		Deps: Deps{DatabaseDSN: testenv.MySQLDSN(t), RabbitURL: testenv.RabbitURL(), RedisAddress: testenv.RedisAddress()},
		Env:  extraEnv,
	})
}

// Deps says where the stack's MariaDB database, RabbitMQ and Redis are.
type Deps struct {
	DatabaseDSN  string
	RabbitURL    string
	RedisAddress string
}

// StackOptions configures StartStackOn.
type StackOptions struct {
	Deps Deps
	// Env is added to (and overrides) the services' environment.
	Env map[string]string
	// LogDir, when set, receives each service's output in <name>.log (appended across restarts)
	// instead of memory, and the services log at info level unless Env says otherwise.
	LogDir string
}

// StartStackOn is StartStack on the given dependencies.
func StartStackOn(t testing.TB, o StackOptions) *Stack {
	t.Helper()
	bin := build(t)
	sipPort, carrierPort := freePort(t), freePort(t)
	s := &Stack{t: t, AdminUser: "admin", AdminPass: "admin-" + testenv.Name("pw"), procs: map[string]*proc{},
		SIPAddress: fmt.Sprintf("127.0.0.1:%d", sipPort), CarrierAddr: fmt.Sprintf("127.0.0.1:%d", carrierPort),
		logDir: o.LogDir, logs: map[string]logSink{}}
	httpPort := freePort(t)
	s.API = fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	level := "debug"
	if o.LogDir != "" {
		level = "info"
	}
	s.Env = map[string]string{
		"DATABASE_DSN":             o.Deps.DatabaseDSN,
		"RABBITMQ_ADDRESS":         o.Deps.RabbitURL,
		"REDIS_ADDRESS":            o.Deps.RedisAddress,
		"LOG_LEVEL":                level,
		"HTTP_ADDRESS":             fmt.Sprintf("127.0.0.1:%d", httpPort),
		"JWT_KEY":                  "e2e:" + strings.Repeat("k", 40),
		"ADMIN_USERNAME":           s.AdminUser,
		"ADMIN_PASSWORD":           s.AdminPass,
		"SIP_LISTEN_ADDRESS":       s.SIPAddress,
		"RTC_TEL_TRUNK_URI":        "sip:{number}@" + s.CarrierAddr,
		"NODE_ID":                  testenv.Name("node"),
		"CARRIER_LISTEN_ADDRESS":   s.CarrierAddr,
		"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
		"RTC_SIP_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
		"BILLING_INITIAL_BALANCE":  "10000000",
	}
	for k, v := range o.Env {
		s.Env[k] = v
	}
	for _, name := range []string{"carrier-sim", "billing-manager", "call-manager", "rtc-manager", "webhook-manager", "api-manager"} {
		s.start(bin, name)
	}
	t.Cleanup(func() {
		s.StopAll()
		if t.Failed() && s.logDir != "" {
			t.Logf("the services' logs are in %s", s.logDir)
		} else if t.Failed() {
			for _, name := range []string{"api-manager", "call-manager", "billing-manager", "rtc-manager", "webhook-manager", "carrier-sim"} {
				if p := s.procs[name]; p != nil {
					t.Logf("==== %s log ====\n%s", name, tail(p.log.String(), 60))
				}
			}
		}
	})
	for _, p := range s.procs {
		if p.admin != "" {
			s.waitReady(p)
		}
	}
	return s
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (s *Stack) start(bin, name string) {
	if err := s.startProc(bin, name); err != nil {
		s.t.Fatal(err)
	}
}

// logOf is the log of a service, made on its first start.
func (s *Stack) logOf(name string) (logSink, error) {
	if l := s.logs[name]; l != nil {
		return l, nil
	}
	var l logSink = &lockedBuffer{}
	if s.logDir != "" {
		path := filepath.Join(s.logDir, name+".log")
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		s.t.Cleanup(func() { _ = f.Close() })
		l = &fileLog{f: f, path: path}
	}
	s.logs[name] = l
	return l, nil
}

func (s *Stack) startProc(bin, name string) error {
	t := s.t
	s.mu.Lock()
	defer s.mu.Unlock()
	log, err := s.logOf(name)
	if err != nil {
		return err
	}
	p := &proc{name: name, log: log, done: make(chan struct{})}
	env := os.Environ()
	for k, v := range s.Env {
		env = append(env, k+"="+v)
	}
	if name != "carrier-sim" {
		p.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		env = append(env, "ADMIN_ADDRESS="+p.admin)
	}
	p.cmd = exec.Command(filepath.Join(bin, name))
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{}
	dieWithParent(p.cmd.SysProcAttr)
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	s.procs[name] = p
	return nil
}

func (s *Stack) waitReady(p *proc) {
	t := s.t
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited during start:\n%s", p.name, tail(p.log.String(), 40))
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 60 s:\n%s", p.name, tail(p.log.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM to one service and waits for it to exit.
func (s *Stack) Stop(name string) {
	p := s.proc(name)
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Kill SIGKILLs one service.
func (s *Stack) Kill(name string) {
	if p := s.proc(name); p != nil {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// StartAgain starts a stopped or killed service again (on a new admin port) without waiting.
func (s *Stack) StartAgain(name string) error { return s.startProc(binDir, name) }

func (s *Stack) proc(name string) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[name]
}

// Ready reports whether a service answers 200 on /readyz (false if it has exited).
func (s *Stack) Ready(name string) bool {
	p := s.proc(name)
	if p == nil || p.admin == "" {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

// Exited reports whether a service's process has ended.
func (s *Stack) Exited(name string) bool {
	p := s.proc(name)
	if p == nil {
		return true
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status of a service that has exited (-1 if killed by a signal or running).
func (s *Stack) ExitCode(name string) int {
	p := s.proc(name)
	if p == nil || p.cmd.ProcessState == nil {
		return -1
	}
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// Restart starts a stopped or killed service again and waits until it is ready.
func (s *Stack) Restart(name string) {
	s.start(binDir, name)
	if p := s.proc(name); p.admin != "" {
		s.waitReady(p)
	}
}

// KillAll SIGKILLs every service at once (an interrupted test has no time for more).
func (s *Stack) KillAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		_ = p.cmd.Process.Kill()
	}
}

// StopAll stops every service.
func (s *Stack) StopAll() {
	var wg sync.WaitGroup
	s.mu.Lock()
	names := make([]string, 0, len(s.procs))
	for name := range s.procs {
		names = append(names, name)
	}
	s.mu.Unlock()
	for _, name := range names {
		wg.Add(1)
		go func() { defer wg.Done(); s.Stop(name) }()
	}
	wg.Wait()
}

// Log is everything a service printed so far (across its restarts when the stack has a LogDir).
func (s *Stack) Log(name string) string {
	s.mu.Lock()
	l := s.logs[name]
	s.mu.Unlock()
	if l != nil {
		return l.String()
	}
	return ""
}

// LogLines returns the JSON log lines of a service that contain every one of needles.
func (s *Stack) LogLines(name string, needles ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.Log(name)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ok := true
		for _, n := range needles {
			if !strings.Contains(line, n) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// ctx is a test context bounded to a minute.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}
