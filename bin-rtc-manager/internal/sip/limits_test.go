package sip_test

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-rtc-manager/internal/sip"
	"voipbin/pkg/testenv"
)

// metric is the value of a counter or gauge in reg (with the label value, if given), 0 if absent.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// closedByPeer reports whether the server closed c: a read returns EOF (or a reset) within wait.
// Data read meanwhile (a keep-alive pong) is skipped.
func closedByPeer(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1024)
	for {
		if _, err := c.Read(buf); err != nil {
			return !errors.Is(err, os.ErrDeadlineExceeded)
		}
	}
}

func options(ua *sip.UA, from net.Addr, tag string) string {
	return "OPTIONS sip:voipbin@" + ua.Addr() + " SIP/2.0\r\nVia: SIP/2.0/TCP " + from.String() +
		";branch=z9hG4bK." + tag + "\r\nFrom: <sip:probe@127.0.0.1>;tag=" + tag + "\r\nTo: <sip:voipbin@127.0.0.1>\r\nCall-ID: " + tag +
		"\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
}

// More TCP connections than SIP_TCP_MAX_CONNECTIONS: the extra ones are closed at once, the others
// still serve SIP, and a freed slot takes a new connection.
func TestTCPConnectionCap(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	ua := startUA(t, sip.Params{TCPMaxConnections: 3, Registerer: reg})
	var conns []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", ua.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns = append(conns, c)
	}
	testenv.Eventually(t, 5*time.Second, "3 open, 2 rejected", func() bool {
		return metric(t, reg, "rtc_sip_tcp_connections", "") == 3 && metric(t, reg, "rtc_sip_tcp_connections_rejected_total", "") == 2
	})
	for i, c := range conns {
		if got, want := closedByPeer(c, 300*time.Millisecond), i >= 3; got != want {
			t.Errorf("connection %d closed by the server: %v, want %v", i, got, want)
		}
	}
	// A connection within the cap serves SIP.
	if _, err := conns[0].Write([]byte(options(ua, conns[0].LocalAddr(), "cap1"))); err != nil {
		t.Fatal(err)
	}
	_ = conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	if n, err := conns[0].Read(buf); err != nil || !bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) {
		t.Fatalf("OPTIONS within the cap: %q, %v", buf[:n], err)
	}
	// Freeing a slot lets a new connection in.
	_ = conns[1].Close()
	testenv.Eventually(t, 5*time.Second, "the slot to be freed", func() bool { return metric(t, reg, "rtc_sip_tcp_connections", "") == 2 })
	c, err := net.Dial("tcp", ua.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if closedByPeer(c, 300*time.Millisecond) {
		t.Error("a connection within the cap again was closed")
	}
}

// An inbound TCP connection that sends nothing for SIP_TCP_IDLE_TIMEOUT is closed; one that keeps
// sending (CRLF keep-alives) stays open.
func TestTCPIdleTimeout(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	const idle = time.Second
	ua := startUA(t, sip.Params{TCPIdleTimeout: idle, Registerer: reg})
	silent, err := net.Dial("tcp", ua.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	talker, err := net.Dial("tcp", ua.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a keep-alive every idle/10 for 3 idle periods
		defer wg.Done()
		tick := time.NewTicker(idle / 10)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := talker.Write([]byte("\r\n")); err != nil {
					return
				}
			}
		}
	}()
	if !closedByPeer(silent, 10*idle) {
		t.Fatal("the silent connection is still open")
	}
	if took := time.Since(start); took < idle-50*time.Millisecond {
		t.Errorf("closed after %s, before the idle timeout %s", took, idle)
	}
	time.Sleep(3 * idle) // the talker's keep-alives span more than the timeout
	close(stop)
	wg.Wait()
	if _, err := talker.Write([]byte("\r\n")); err != nil {
		t.Fatalf("the talking connection was closed: %v", err)
	}
	if !closedByPeer(talker, 10*idle) {
		t.Fatal("the talker, now silent, is still open")
	}
	testenv.Eventually(t, 5*time.Second, "both counted and released", func() bool {
		return metric(t, reg, "rtc_sip_tcp_idle_closed_total", "") == 2 && metric(t, reg, "rtc_sip_tcp_connections", "") == 0
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// Garbage over UDP and TCP is counted by transport; its log lines are a few per second at most,
// each truncated; the UA still answers afterwards.
func TestMalformedMessagesCountedAndLogBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	logs := &lockedBuffer{}
	ua := startUA(t, sip.Params{Registerer: reg, Log: slog.New(slog.NewJSONHandler(logs, nil))})
	udp, err := net.Dial("udp", ua.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	garbage := []byte("NOT SIP AT ALL " + strings.Repeat("X", 2000) + "\r\n\r\n")
	const sent, batch = 200, 20
	start := time.Now()
	for i := 0; i < sent; i += batch {
		for range batch {
			if _, err := udp.Write(garbage); err != nil {
				t.Fatal(err)
			}
		}
		// Each batch is read before the next is sent, so none is lost to a full socket buffer.
		testenv.Eventually(t, 10*time.Second, "the datagrams counted", func() bool {
			return metric(t, reg, "rtc_sip_malformed_messages_total", "udp") == float64(i+batch)
		})
	}
	elapsed := time.Since(start)
	tcp, err := net.Dial("tcp", ua.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if _, err := tcp.Write(garbage); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the TCP garbage counted", func() bool {
		return metric(t, reg, "rtc_sip_malformed_messages_total", "tcp") >= 1
	})
	if !closedByPeer(tcp, 5*time.Second) {
		t.Error("a TCP stream that cannot be framed stays open")
	}

	lines := logs.lines("malformed SIP message")
	allowed := 5 + int(5*time.Since(start).Seconds()) + 1
	if len(lines) == 0 || len(lines) > allowed {
		t.Fatalf("%d log lines for %d malformed messages in %s, want 1 to %d", len(lines), sent+1, elapsed, allowed)
	}
	for _, l := range lines {
		if len(l) > 1024 {
			t.Fatalf("a log line of %d bytes: %.200s…", len(l), l)
		}
	}
	if raw := logs.lines(strings.Repeat("X", 300)); len(raw) > 0 {
		t.Fatalf("the garbage was logged untruncated: %.200s…", raw[0])
	}
	logged := len(lines)
	if got := metric(t, reg, "rtc_sip_log_lines_suppressed_total", ""); int(got) != sent+1-logged {
		t.Errorf("suppressed = %v, want %d", got, sent+1-logged)
	}
	t.Logf("%d malformed messages, %d logged, in %s", sent+1, logged, elapsed)

	// Still serving.
	_ = udp.SetReadDeadline(time.Now().Add(5 * time.Second))
	opt := strings.Replace(options(ua, udp.LocalAddr(), "alive"), "SIP/2.0/TCP", "SIP/2.0/UDP", 1)
	if _, err := udp.Write([]byte(opt)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := udp.Read(buf)
	if err != nil || !bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) {
		t.Fatalf("OPTIONS after the garbage: %q, %v", buf[:n], err)
	}
}
