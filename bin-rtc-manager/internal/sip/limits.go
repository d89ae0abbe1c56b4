package sip

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// What the UA bounds against a hostile or broken peer: the number of inbound TCP connections
// and how long one may stay idle, and how much a malformed message may cost in logs.

// limits are the UA's counters of what it refused or cut short.
type limits struct {
	tcpActive     atomic.Int64
	tcpRejected   prometheus.Counter
	tcpIdleClosed prometheus.Counter
	malformed     *prometheus.CounterVec
	suppressed    prometheus.Counter
	logs          *tokenBucket
}

func newLimits() *limits {
	return &limits{
		tcpRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "rtc_sip_tcp_connections_rejected_total",
			Help: "Inbound SIP TCP connections closed at once because SIP_TCP_MAX_CONNECTIONS were open."}),
		tcpIdleClosed: prometheus.NewCounter(prometheus.CounterOpts{Name: "rtc_sip_tcp_idle_closed_total",
			Help: "Inbound SIP TCP connections closed after SIP_TCP_IDLE_TIMEOUT without data."}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rtc_sip_malformed_messages_total",
			Help: "SIP messages that could not be parsed, by transport."}, []string{"transport"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "rtc_sip_log_lines_suppressed_total",
			Help: "Log lines about malformed SIP messages dropped by the log rate limit."}),
		logs: newTokenBucket(malformedLogsPerSecond, malformedLogsPerSecond),
	}
}

func (l *limits) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.tcpRejected, l.tcpIdleClosed, l.malformed, l.suppressed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rtc_sip_tcp_connections",
			Help: "Inbound SIP TCP connections open now."}, func() float64 { return float64(l.tcpActive.Load()) })}
}

// ---- TCP: connection cap and idle timeout ----------------------------------------------------

// limitedListener is the TCP listener handed to sipgo: it closes a connection beyond max at once
// (max 0: no cap), and each connection it returns ends after idle without data (0: never).
type limitedListener struct {
	net.Listener
	max  int
	idle time.Duration
	lim  *limits
	log  *slog.Logger
}

// Accept returns the next connection within the cap. It never returns a transient error (sipgo
// stops serving TCP on any Accept error): out of file descriptors, it waits and tries again.
func (l *limitedListener) Accept() (net.Conn, error) {
	backoff := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				l.log.Warn("accepting a SIP TCP connection failed; retrying", "error", err, "backoff", backoff)
				time.Sleep(backoff)
				backoff = min(backoff*2, time.Second)
				continue
			}
			return nil, err
		}
		backoff = 5 * time.Millisecond
		if n := l.lim.tcpActive.Add(1); l.max > 0 && n > int64(l.max) {
			l.lim.tcpActive.Add(-1)
			l.lim.tcpRejected.Inc()
			if l.lim.logs.allow() {
				l.log.Warn("SIP TCP connection refused: too many open", "remote", c.RemoteAddr().String(), "max", l.max)
			}
			_ = c.Close()
			continue
		}
		return &idleConn{Conn: c, idle: l.idle, lim: l.lim}, nil
	}
}

func isTemporary(err error) bool {
	var se *os.SyscallError
	if errors.As(err, &se) {
		s := se.Err.Error()
		return strings.Contains(s, "too many open files") || strings.Contains(s, "no buffer space")
	}
	return false
}

// idleConn is an accepted connection that ends after idle without data.
type idleConn struct {
	net.Conn
	idle      time.Duration
	lim       *limits
	closeOnce sync.Once
	closeErr  error
}

func (c *idleConn) Read(b []byte) (int, error) {
	if c.idle > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
			return 0, err
		}
	}
	n, err := c.Conn.Read(b)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		c.lim.tcpIdleClosed.Inc()
		_ = c.Close()
		return n, io.EOF // an ordinary end for sipgo, which then forgets the connection
	}
	return n, err
}

func (c *idleConn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.lim.tcpActive.Add(-1)
	})
	return c.closeErr
}

// ---- malformed messages: counted, logged a few times a second, truncated -------------------------

const (
	malformedLogsPerSecond = 5
	// maxLogValue bounds every string sipgo logs (it logs a malformed message whole).
	maxLogValue = 256
)

// sipgo reports a message it cannot parse only by logging "failed to parse" with the raw data (both
// transports); it offers no callback. sipLogHandler is the handler of the logger the UA gives
// sipgo: it counts those records by transport, lets a few through per second and drops the rest
// (counted too), and truncates every long string value sipgo logs.
type sipLogHandler struct {
	next      slog.Handler
	lim       *limits
	transport string // from sipgo's caller attribute, "Transport<UDP>"
}

// Enabled lets errors through whatever the level, so malformed messages (logged as errors) are
// always counted; other records cost nothing below the level.
func (h *sipLogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelError || h.next.Enabled(ctx, level)
}

func (h *sipLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "failed to parse" {
		t := h.transport
		if t == "" {
			t = "unknown"
		}
		h.lim.malformed.WithLabelValues(t).Inc()
		if !h.lim.logs.allow() {
			h.lim.suppressed.Inc()
			return nil
		}
		r.Message = "malformed SIP message"
		r.Level = slog.LevelWarn
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(truncate(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h *sipLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	for i, a := range attrs {
		if a.Key == "caller" {
			if v := a.Value.String(); strings.HasPrefix(v, "Transport<") {
				c.transport = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(v, "Transport<"), ">"))
			}
		}
		attrs[i] = truncate(a)
	}
	c.next = h.next.WithAttrs(attrs)
	return &c
}

func (h *sipLogHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

// truncate shortens a long string or any other value whose text is long (an error quoting the
// message it could not parse).
func truncate(a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString, slog.KindAny:
		if s := a.Value.String(); len(s) > maxLogValue {
			return slog.String(a.Key, s[:maxLogValue]+"…("+strconv.Itoa(len(s))+" bytes)")
		}
	}
	return a
}

// tokenBucket allows rate events per second with bursts of burst.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

func (b *tokenBucket) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
