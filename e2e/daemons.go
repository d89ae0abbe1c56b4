package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"voipbin/pkg/testenv"
)

// Daemon is a MariaDB, RabbitMQ or Redis server of the test's own, on its own ports and data
// under a temporary directory, so a test may kill and restart it without touching the machine's
// shared instances. It runs in a process group of its own: Kill ends the server and every
// process it started (RabbitMQ's Erlang helpers), never anything else.
type Daemon struct {
	Name string
	// Address is host:port of the service.
	Address string
	dir     string
	argv    []string
	env     []string
	ready   func(ctx context.Context) error
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// Start launches the server; it does not wait for it to be ready.
func (d *Daemon) Start() error {
	if d.cmd != nil && !d.exited() {
		return fmt.Errorf("%s already running", d.Name)
	}
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.argv[0], d.argv[1:]...)
	cmd.Dir = d.dir
	cmd.Env = append(os.Environ(), d.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	dieWithParent(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start %s: %w", d.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
	d.cmd, d.done = cmd, done
	return nil
}

func (d *Daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Kill SIGKILLs the server's process group and waits for the server to exit.
func (d *Daemon) Kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
	}
}

// Ready reports nil once the server serves requests (a login that works, not just an open port).
func (d *Daemon) Ready(ctx context.Context) error {
	if d.cmd == nil || d.exited() {
		return fmt.Errorf("%s is not running (log %s)", d.Name, d.logPath)
	}
	return d.ready(ctx)
}

// WaitReady polls Ready until it succeeds or timeout passes.
func (d *Daemon) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := d.Ready(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if d.cmd == nil || d.exited() || time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w\n%s", d.Name, timeout, err, tailFile(d.logPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return tail(string(b), n)
}

// requireBinaries skips the test, saying which, when a server binary is missing.
func requireBinaries(t testing.TB, paths ...string) {
	t.Helper()
	var missing []string
	for _, p := range paths {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Skipf("needs %s (MariaDB server, RabbitMQ server and Redis server packages)", strings.Join(missing, ", "))
	}
}

// OwnMariaDB initialises a data directory under dir with mariadb-install-db and starts a
// mariadbd on a free loopback port (root, no password); the database "voipbin" exists.
func OwnMariaDB(t testing.TB, dir string) (*Daemon, string) {
	t.Helper()
	requireBinaries(t, "mariadb-install-db", "/usr/sbin/mariadbd")
	dir = filepath.Join(dir, "mariadb")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mariadb-install-db", "--no-defaults", "--user=root", "--datadir="+data,
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	port := freePort(t)
	d := &Daemon{Name: "mariadb", Address: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, logPath: filepath.Join(dir, "mariadbd.log"),
		argv: []string{"/usr/sbin/mariadbd", "--no-defaults", "--user=root", "--datadir=" + data,
			fmt.Sprintf("--port=%d", port), "--bind-address=127.0.0.1", "--socket=" + filepath.Join(dir, "sock"),
			"--pid-file=" + filepath.Join(dir, "pid"), "--skip-name-resolve", "--max-connections=500",
			"--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=2"}}
	base := mysql.NewConfig()
	base.User, base.Net, base.Addr = "root", "tcp", d.Address
	base.Timeout = 2 * time.Second
	d.ready = func(ctx context.Context) error {
		db, err := sql.Open("mysql", base.FormatDSN())
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS voipbin")
		return err
	}
	t.Cleanup(d.Kill)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	cfg := base.Clone()
	cfg.DBName, cfg.ParseTime, cfg.InterpolateParams, cfg.Loc = "voipbin", true, true, time.UTC
	cfg.Timeout = 0
	return d, cfg.FormatDSN()
}

// OwnRabbitMQ starts a second RabbitMQ node (its own node name, AMQP and distribution ports, data
// and logs under dir, no plugins, none of /etc/rabbitmq's settings) and returns it with its URL.
func OwnRabbitMQ(t testing.TB, dir string) (*Daemon, string) {
	t.Helper()
	server := "/usr/lib/rabbitmq/bin/rabbitmq-server" // the script itself, not the wrapper that su's to rabbitmq
	requireBinaries(t, server)
	dir = filepath.Join(dir, "rabbitmq")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	port, dist := freePort(t), freePort(t)
	files := map[string]string{
		"enabled_plugins": "[].\n",
		"rabbitmq-env.conf": "ERL_EPMD_ADDRESS=127.0.0.1\n" +
			"export ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	node := strings.ReplaceAll(testenv.Name("vbfault"), "_", "-") + "@localhost"
	d := &Daemon{Name: "rabbitmq", Address: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, logPath: filepath.Join(dir, "server.log"),
		argv: []string{server},
		env: []string{
			"HOME=" + dir, // the Erlang cookie of this node lives here
			"RABBITMQ_NODENAME=" + node,
			"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
			fmt.Sprintf("RABBITMQ_NODE_PORT=%d", port),
			fmt.Sprintf("RABBITMQ_DIST_PORT=%d", dist),
			"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"),
			"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
			"RABBITMQ_CONFIG_FILE=" + filepath.Join(dir, "rabbitmq.conf"),
			"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(dir, "advanced.config"),
			"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(dir, "rabbitmq-env.conf"),
			"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(dir, "enabled_plugins"),
			"RABBITMQ_PID_FILE=" + filepath.Join(dir, "pid"),
			"ERL_EPMD_ADDRESS=127.0.0.1",
		}}
	url := fmt.Sprintf("amqp://guest:guest@%s/", d.Address)
	d.ready = func(ctx context.Context) error {
		c, err := amqp091.DialConfig(url, amqp091.Config{Dial: func(network, addr string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, network, addr)
		}})
		if err != nil {
			return err
		}
		return c.Close()
	}
	t.Cleanup(d.Kill)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	return d, url
}

// OwnRedis starts a redis-server on a free loopback port with no persistence, as a cache is run.
func OwnRedis(t testing.TB, dir string) *Daemon {
	t.Helper()
	requireBinaries(t, "redis-server")
	dir = filepath.Join(dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	d := &Daemon{Name: "redis", Address: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, logPath: filepath.Join(dir, "redis.log"),
		argv: []string{"redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "no", "--dir", dir}}
	d.ready = func(ctx context.Context) error {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", d.Address)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(string(buf[:n]), "+PONG") {
			return errors.New("redis answered " + string(buf[:n]))
		}
		return nil
	}
	t.Cleanup(d.Kill)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	return d
}
