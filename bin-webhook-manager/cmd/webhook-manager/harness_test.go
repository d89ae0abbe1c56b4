package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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

	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
	"voipbin/pkg/webhookapi"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "webhook-manager-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// binary builds this command once per test run and returns its path.
func binary(t testing.TB) string {
	t.Helper()
	path := filepath.Join(binDir, "webhook-manager")
	buildOnce.Do(func() {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		out, err := exec.Command(goCmd, "build", "-o", path, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return path
}

// receiver is the Flask endpoint of testdata/receiver.py, running as a child process.
type receiver struct {
	base string
}

type received struct {
	EventID          string            `json:"event_id"`
	EventType        string            `json:"event_type"`
	Sequence         int64             `json:"sequence"`
	ResourceID       string            `json:"resource_id"`
	CallID           string            `json:"call_id"`
	WebhookID        string            `json:"webhook_id"`
	Method           string            `json:"method"`
	VerifiedVoIPBIN  bool              `json:"verified_voipbin"`
	VerifiedStandard bool              `json:"verified_standard"`
	Attempt          int               `json:"attempt"`
	Status           int               `json:"status"`
	At               float64           `json:"at"`
	Body             string            `json:"body"`
	Headers          map[string]string `json:"headers"`
}

const python = "/usr/bin/python3"

func startReceiver(t testing.TB) *receiver {
	t.Helper()
	if err := exec.Command(python, "-c", "import flask").Run(); err != nil {
		t.Skipf("python3-flask is not installed (apt-get install python3-flask): %v", err)
	}
	cmd := exec.Command(python, "testdata/receiver.py")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		var hello struct{ Port int }
		if !ok || json.Unmarshal([]byte(line), &hello) != nil || hello.Port == 0 {
			t.Fatalf("receiver did not start: %q %s", line, stderr.String())
		}
		return &receiver{base: fmt.Sprintf("http://127.0.0.1:%d", hello.Port)}
	case <-time.After(20 * time.Second):
		t.Fatalf("receiver did not start in 20s: %s", stderr.String())
	}
	return nil
}

func (r *receiver) hookURL() string { return r.base + "/hook" }

func (r *receiver) configure(t testing.TB, cfg map[string]any) {
	t.Helper()
	b, _ := json.Marshal(cfg)
	resp, err := http.Post(r.base+"/_config", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("configure receiver: %d", resp.StatusCode)
	}
}

func (r *receiver) received(t testing.TB) []received {
	t.Helper()
	resp, err := http.Get(r.base + "/_received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []received
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// managerProc is the webhook manager running as a real process.
type managerProc struct {
	t       testing.TB
	env     []string
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
	admin   string
	conn    *amqp.Conn
	client  *webhookapi.Client
	events  string
	rpcQ    string
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// toQueue sends every call to one queue: the contract client talks to this test's service alone.
type toQueue struct {
	c     rpc.Caller
	queue string
}

func (q toQueue) Call(ctx context.Context, _ string, req rpc.Request) (*rpc.Response, error) {
	return q.c.Call(ctx, q.queue, req)
}

// newService prepares a webhook manager with its own database and queues, and starts it.
func newService(t testing.TB, extraEnv ...string) *managerProc {
	t.Helper()
	conn := testenv.Rabbit(t)
	s := &managerProc{t: t, conn: conn, events: testenv.Name("webhook-events"), rpcQ: testenv.Name("webhook-rpc"),
		logPath: filepath.Join(t.TempDir(), "webhook-manager.log"), admin: freePort(t)}
	testenv.DeleteQueuesAtCleanup(t, conn, s.events, event.DeadQueue(s.events), s.rpcQ)
	s.env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"DATABASE_DSN=" + testenv.MySQLDSN(t),
		"RABBITMQ_ADDRESS=" + testenv.RabbitURL(),
		"REDIS_ADDRESS=" + testenv.RedisAddress(),
		"ADMIN_ADDRESS=" + s.admin,
		"LOG_LEVEL=debug",
		"WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8,::1",
		"WEBHOOK_EVENT_QUEUE=" + s.events,
		"WEBHOOK_RPC_QUEUE=" + s.rpcQ,
		"WEBHOOK_RETRY_BASE=200ms",
		"WEBHOOK_RETRY_MAX=1s",
		"WEBHOOK_POLL_INTERVAL=100ms",
		"WEBHOOK_TIMEOUT=3s",
	}, extraEnv...)
	rc := rpc.NewClient(conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(rc.Close)
	s.client = webhookapi.NewClient(toQueue{c: rc, queue: s.rpcQ})
	s.start()
	t.Cleanup(func() {
		if s.running() {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.exited:
			case <-time.After(20 * time.Second):
				_ = s.cmd.Process.Kill()
				<-s.exited
			}
		}
		if t.Failed() {
			if b, err := os.ReadFile(s.logPath); err == nil {
				t.Logf("webhook-manager log (last 8 KiB):\n%s", tail(b, 8<<10))
			}
		}
	})
	return s
}

// another starts a second instance of the same deployment: same database, queues and settings,
// its own admin port and log.
func (s *managerProc) another() *managerProc {
	s.t.Helper()
	o := &managerProc{t: s.t, conn: s.conn, client: s.client, events: s.events, rpcQ: s.rpcQ,
		logPath: filepath.Join(s.t.TempDir(), "webhook-manager-2.log"), admin: freePort(s.t)}
	for _, kv := range s.env {
		if strings.HasPrefix(kv, "ADMIN_ADDRESS=") {
			kv = "ADMIN_ADDRESS=" + o.admin
		}
		o.env = append(o.env, kv)
	}
	o.start()
	s.t.Cleanup(func() {
		if o.running() {
			_ = o.cmd.Process.Signal(syscall.SIGTERM)
			<-o.exited
		}
	})
	return o
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// start runs the binary and waits until it consumes both of its queues.
func (s *managerProc) start() {
	s.t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd = exec.Command(binary(s.t))
	s.cmd.Env = s.env
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { _ = s.cmd.Wait(); logf.Close(); close(s.exited) }()
	for _, q := range []string{s.events, s.rpcQ} {
		testenv.Eventually(s.t, 60*time.Second, "webhook-manager consuming "+q, func() bool {
			if !s.running() {
				s.t.Fatalf("webhook-manager exited: %s", s.cmd.ProcessState)
			}
			ch, err := s.conn.Channel(context.Background())
			if err != nil {
				return false
			}
			defer ch.Close()
			info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			return err == nil && info.Consumers > 0
		})
	}
}

func (s *managerProc) running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// kill ends the process at once, as a crash or an OOM kill would: nothing is finished or flushed.
func (s *managerProc) kill() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		s.t.Fatal(err)
	}
	<-s.exited
}

func (s *managerProc) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

func (s *managerProc) metrics(t testing.TB) string {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return b.String()
}

// publish sends ev to its exchange as a producer's outbox relay would.
func publish(t testing.TB, conn *amqp.Conn, exchange string, ev event.Event) {
	t.Helper()
	b, _ := json.Marshal(ev)
	err := conn.Publish(context.Background(), exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
		amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: ev.EventID, Body: b, Timestamp: time.Now()},
		amqp.PublishOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// verifyWithStandardWebhooks checks deliveries with the Standard Webhooks reference library for
// JavaScript, installed from npm into a temporary directory. It is skipped (not passed) when node,
// npm or the package cannot be had.
func verifyWithStandardWebhooks(t *testing.T, secret string, rs []received) {
	t.Helper()
	node, err1 := exec.LookPath("node")
	npm, err2 := exec.LookPath("npm")
	if err1 != nil || err2 != nil {
		t.Skip("node and npm are needed for the Standard Webhooks library check")
	}
	dir := t.TempDir()
	install := exec.Command(npm, "install", "--no-save", "--no-audit", "--no-fund", "standardwebhooks@1.1.1")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Skipf("cannot install the standardwebhooks package: %v: %s", err, out)
	}
	script, err := filepath.Abs("testdata/swverify.js")
	if err != nil {
		t.Fatal(err)
	}
	type delivery struct {
		Body    string            `json:"body"`
		Headers map[string]string `json:"headers"`
	}
	in := struct {
		Secret     string     `json:"secret"`
		Deliveries []delivery `json:"deliveries"`
	}{Secret: secret}
	for _, r := range rs {
		in.Deliveries = append(in.Deliveries, delivery{r.Body, r.Headers})
	}
	b, _ := json.Marshal(in)
	cmd := exec.Command(node, script)
	cmd.Dir = dir // resolves require("standardwebhooks") from dir/node_modules
	cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"))
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("verified %d", len(rs))) {
		t.Fatalf("the Standard Webhooks library rejected our deliveries: %v: %s", err, out)
	}
}
