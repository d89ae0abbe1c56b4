// Package testenv gives integration tests the real MariaDB, Redis and RabbitMQ of the machine
// (started by `make test`): a fresh database per test, a connected amqp.Conn, a Redis client, and
// names unique to the test so parallel packages never collide; each test process gets a RabbitMQ
// virtual host of its own. Addresses come from
// TEST_DATABASE_DSN (a DSN without a database name), TEST_RABBITMQ_ADDRESS and TEST_REDIS_ADDRESS,
// defaulting to the local services.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/amqp"
	"voipbin/pkg/telemetry"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// rabbitBase is the broker the tests use.
func rabbitBase() string { return env("TEST_RABBITMQ_ADDRESS", "amqp://guest:guest@127.0.0.1:5672/") }

// processVhostEnv carries this process's virtual host URL to the child processes tests start.
const processVhostEnv = "VOIPBIN_TEST_RABBITMQ_URL"

var (
	vhostOnce sync.Once
	vhostURL  string
)

// RabbitURL is the broker URL for this test process: a virtual host of its own (made on first use
// with rabbitmqctl), so tests of different packages, which run at the same time, can each serve and
// consume the platform's well-known queue and exchange names without hearing each other. Child
// processes started by a test inherit it. Without rabbitmqctl (a remote broker) it is the broker's
// default virtual host.
func RabbitURL() string {
	if u := os.Getenv(processVhostEnv); u != "" {
		return u
	}
	vhostOnce.Do(func() {
		vhostURL = rabbitBase()
		if _, err := exec.LookPath("rabbitmqctl"); err != nil {
			return
		}
		reapStaleVhosts()
		name := fmt.Sprintf("vbtest_%d_%s", os.Getpid(), Name("p")[2:])
		if err := exec.Command("rabbitmqctl", "-q", "add_vhost", name).Run(); err != nil {
			return
		}
		if err := exec.Command("rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*").Run(); err != nil {
			return
		}
		vhostURL = strings.TrimSuffix(rabbitBase(), "/") + "/" + name
		_ = os.Setenv(processVhostEnv, vhostURL)
	})
	return vhostURL
}

// reapStaleVhosts deletes the virtual hosts of test processes that no longer run.
func reapStaleVhosts() {
	out, err := exec.Command("rabbitmqctl", "-q", "list_vhosts", "name").Output()
	if err != nil {
		return
	}
	for _, name := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(name, "vbtest_")
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "_")
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		_ = exec.Command("rabbitmqctl", "-q", "delete_vhost", name).Run()
	}
}

// RedisAddress is the Redis the tests use.
func RedisAddress() string { return env("TEST_REDIS_ADDRESS", "127.0.0.1:6379") }

// Name is a name unique to this test run, safe for queues, databases and keys.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// Logger is a logger that writes to the test log when -v is given, else discards.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return telemetry.NewLogger(os.Stderr, "test", slog.LevelDebug)
	}
	return slog.New(slog.NewJSONHandler(io.Discard, nil))
}

// Rabbit connects to the test broker; the connection closes when the test ends.
func Rabbit(t testing.TB) *amqp.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := amqp.Dial(ctx, RabbitURL(), Logger(t))
	if err != nil {
		t.Fatalf("rabbitmq: %v (is it running? `make test` starts it)", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// MySQLDSN is a DSN for a new empty database that is dropped when the test ends.
func MySQLDSN(t testing.TB) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(env("TEST_DATABASE_DSN", "root@tcp(127.0.0.1:3306)/"))
	if err != nil {
		t.Fatalf("TEST_DATABASE_DSN: %v", err)
	}
	cfg.ParseTime, cfg.InterpolateParams, cfg.Loc = true, true, time.UTC
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	name := strings.ToLower(Name("test_" + sanitize(t.Name())))
	if _, err := admin.Exec("CREATE DATABASE `" + name + "`"); err != nil {
		t.Fatalf("create test database: %v (is MariaDB running? `make test` starts it)", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err == nil {
			_, _ = db.Exec("DROP DATABASE IF EXISTS `" + name + "`")
			_ = db.Close()
		}
	})
	cfg.DBName = name
	return cfg.FormatDSN()
}

// MySQL opens a new empty database that is dropped when the test ends.
func MySQL(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", MySQLDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
		if b.Len() >= 24 {
			break
		}
	}
	return b.String()
}

// Redis connects to the test Redis. Tests must use keys unique to them (Name).
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: RedisAddress()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis: %v (is it running? `make test` starts it)", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Eventually polls cond every 10 ms until it is true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RabbitVhost creates a virtual host of the test broker for this test alone (deleted when the
// test ends) and returns its URL, so a test may force-close its connections without touching
// other tests running at the same time.
func RabbitVhost(t testing.TB) (url, vhost string) {
	t.Helper()
	vhost = Name("test")
	rabbitmqctl(t, "add_vhost", vhost)
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "-q", "delete_vhost", vhost).Run() })
	rabbitmqctl(t, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
	base := strings.TrimSuffix(rabbitBase(), "/")
	return base + "/" + vhost, vhost
}

// CloseAllConnections force-closes every connection to vhost, as an operator or a broker restart
// would.
func CloseAllConnections(t testing.TB, vhost string) {
	t.Helper()
	rabbitmqctl(t, "close_all_connections", "--vhost", vhost, "test: forced close")
}

func rabbitmqctl(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// DialRabbit connects to url; the connection closes when the test ends.
func DialRabbit(t testing.TB, url string) *amqp.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := amqp.Dial(ctx, url, Logger(t))
	if err != nil {
		t.Fatalf("rabbitmq: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// DeleteQueuesAtCleanup deletes the named queues when the test ends, so durable test queues do
// not pile up in the shared broker.
func DeleteQueuesAtCleanup(t testing.TB, conn *amqp.Conn, queues ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ch, err := conn.Channel(ctx)
		if err != nil {
			return
		}
		defer ch.Close()
		for _, q := range queues {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})
}
