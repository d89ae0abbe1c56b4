package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"voipbin/pkg/customerapi"
	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func env(t *testing.T, extra map[string]string) func(string) string {
	m := map[string]string{
		"DATABASE_DSN":     testenv.MySQLDSN(t),
		"RABBITMQ_ADDRESS": testenv.RabbitURL(),
		"REDIS_ADDRESS":    testenv.RedisAddress(),
		"ADMIN_ADDRESS":    "127.0.0.1:0",
		"HTTP_ADDRESS":     "127.0.0.1:0",
		"JWT_KEY":          "main-test-secret-of-at-least-32-bytes",
		"BCRYPT_COST":      "4",
		"LOG_LEVEL":        "debug",
	}
	for k, v := range extra {
		m[k] = v
	}
	return func(k string) string { return m[k] }
}

func TestRunRefusesToStartWithoutASuperadmin(t *testing.T) {
	var out syncBuffer
	err := run(context.Background(), nil, env(t, nil), &out)
	if err == nil || !strings.Contains(err.Error(), "ADMIN_USERNAME") {
		t.Fatalf("run() = %v, want a clear error naming ADMIN_USERNAME", err)
	}
}

func TestRunMigrateOnly(t *testing.T) {
	var out syncBuffer
	if err := run(context.Background(), []string{"migrate"}, env(t, nil), &out); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "00002_identity.sql") {
		t.Fatalf("no migration logged: %s", out.String())
	}
}

// TestRunServesAndPublishes starts the binary's run with a fresh database: the superadmin is
// created, logs in, creates a customer, and customer.created reaches customer.events; then a
// cancel stops everything cleanly.
func TestRunServesAndPublishes(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("customer_created")
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := event.DeclareExchange(ch, event.ExchangeCustomer); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, event.TypeKey(customerapi.EventCreated), event.ExchangeCustomer, false, nil); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, env(t, map[string]string{"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin"}), &out)
	}()
	base := "http://" + waitListening(t, &out, done)
	post := func(path, token, body string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	code, login := post("/auth/login", "", `{"username":"admin","password":"admin"}`)
	if code != 200 {
		t.Fatalf("admin login: %d %v", code, login)
	}
	name := testenv.Name("cust")
	code, created := post("/v1.0/customers", login["token"].(string), `{"name":"`+name+`","username":"`+strings.ReplaceAll(name, "_", "-")+`","password":"password-123"}`)
	if code != 201 {
		t.Fatalf("create customer: %d %v", code, created)
	}
	id := created["customer"].(map[string]any)["id"].(string)
	testenv.Eventually(t, 10*time.Second, "customer.created on customer.events", func() bool {
		d, ok, err := ch.Get(queue, true)
		if err != nil || !ok {
			return false
		}
		var ev event.Event
		return json.Unmarshal(d.Body, &ev) == nil && ev.ResourceID == id && ev.EventType == customerapi.EventCreated
	})

	// The WebSocket endpoint is wired: it authenticates like the REST routes.
	wsGet := func(query string) (int, string) {
		resp, err := http.Get(base + "/v1.0/ws" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, b := wsGet(""); code != 401 || !strings.Contains(b, "AUTHENTICATION_REQUIRED") {
		t.Fatalf("GET /v1.0/ws without a credential: %d %s", code, b)
	}
	testenv.Eventually(t, 10*time.Second, "GET /v1.0/ws with a token but no handshake to be refused as such", func() bool {
		code, b := wsGet("?token=" + login["token"].(string))
		return code == 400 && strings.Contains(b, "WEBSOCKET_HANDSHAKE_INVALID")
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run() = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
	if !strings.Contains(out.String(), `"msg":"stopped"`) {
		t.Fatalf("no clean stop in the log")
	}
}

// TestRunServesTLS serves HTTPS with the configured certificate and marks the cookie Secure.
func TestRunServesTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, env(t, map[string]string{"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin",
			"TLS_CERT_FILE": certFile, "TLS_KEY_FILE": keyFile}), &out)
	}()
	addr := waitListening(t, &out, done)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // our own self-signed test certificate
	resp, err := client.Post("https://"+addr+"/auth/login", "application/json", strings.NewReader(`{"username":"admin","password":"admin"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(resp.Cookies()) != 1 || !resp.Cookies()[0].Secure {
		t.Fatalf("login over TLS: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	if resp, err := http.Get("http://" + addr + "/ping"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered on the TLS port")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunRefusesAMissingCertificate(t *testing.T) {
	var out syncBuffer
	err := run(context.Background(), nil, env(t, map[string]string{"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": "admin",
		"TLS_CERT_FILE": "/nonexistent/cert.pem", "TLS_KEY_FILE": "/nonexistent/key.pem"}), &out)
	if err == nil || !strings.Contains(err.Error(), "TLS_CERT_FILE") {
		t.Fatalf("run() = %v, want an error naming TLS_CERT_FILE", err)
	}
}

func waitListening(t *testing.T, out *syncBuffer, done chan error) string {
	t.Helper()
	var addr string
	testenv.Eventually(t, 30*time.Second, "the http server to listen", func() bool {
		for _, l := range strings.Split(out.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "http server listening" {
				addr = m["address"].(string)
				return true
			}
		}
		select {
		case err := <-done:
			t.Fatalf("run ended: %v\n%s", err, out.String())
		default:
		}
		return false
	})
	return addr
}

func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
