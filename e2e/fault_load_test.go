package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// ---- phases -----------------------------------------------------------------------------------

// phaseClock names what the fault test is doing now ("warmup", "api down", "api healing", …), so
// every answer the clients get is attributed to the fault it happened under.
type phaseClock struct {
	v     atomic.Value
	mu    sync.Mutex
	order []string    // every phase, in the order they began
	began []time.Time // when each began
}

func (p *phaseClock) set(name string) {
	p.v.Store(name)
	p.mu.Lock()
	p.order = append(p.order, name)
	p.began = append(p.began, time.Now())
	p.mu.Unlock()
}

func (p *phaseClock) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.order...)
}

// at is the phase that was going on at t.
func (p *phaseClock) at(t time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	name := ""
	for i, b := range p.began {
		if b.After(t) {
			break
		}
		name = p.order[i]
	}
	return name
}
func (p *phaseClock) get() string {
	if s, ok := p.v.Load().(string); ok {
		return s
	}
	return ""
}

// ---- load: clients that retry with their Idempotency-Key ---------------------------------------

// attempt is one HTTP try of a logical request.
type attempt struct {
	Phase      string
	Start      time.Time
	Status     int // 0: transport error
	Reason     string
	Message    string
	RequestID  string
	RetryAfter string
	Err        string
}

// logical is one call a client wants placed, under one Idempotency-Key, retried until it gets a
// definitive answer: 201, or a 4xx that retrying cannot change.
type logical struct {
	Key      string
	Start    time.Time
	End      time.Time
	Attempts []attempt
	// Outcome: "created", "refused" (definitive 4xx) or "undecided" (no definitive answer in time).
	Outcome string
	CallIDs []string // ids in the 201 answers (all the same when the key works)
	Final   attempt
}

type loadConfig struct {
	API      string
	Token    string
	Number   string
	Rate     float64       // logical requests per second
	RetryFor time.Duration // how long one logical request keeps retrying
}

// load runs the clients.
type load struct {
	abort context.Context // ends every retry at once (the test is over)
	cfg   loadConfig
	phase *phaseClock
	hc    *http.Client

	mu        sync.Mutex
	requests  []*logical
	successes []time.Time // start times of attempts that got a 201, in the order they ended
	wg        sync.WaitGroup
	stopped   chan struct{} // closed when run returns: no wg.Add after it
}

func newLoad(abort context.Context, cfg loadConfig, phase *phaseClock) *load {
	tr := &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second,
		DialContext: (&net.Dialer{Timeout: 3 * time.Second}).DialContext}
	return &load{abort: abort, cfg: cfg, phase: phase, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}, stopped: make(chan struct{})}
}

// run starts a logical request every 1/Rate seconds until ctx ends; the requests themselves go
// on (wait for them with drain).
func (l *load) run(ctx context.Context) {
	defer close(l.stopped)
	every := time.Duration(float64(time.Second) / l.cfg.Rate)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r := &logical{Key: "fault-" + randomHex(12), Start: time.Now()}
			l.mu.Lock()
			l.requests = append(l.requests, r)
			l.mu.Unlock()
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				l.place(r)
			}()
		}
	}
}

// drain waits until run has returned and every logical request has its answer, or timeout.
func (l *load) drain(timeout time.Duration) bool {
	<-l.stopped
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// firstSuccessAfter reports whether an attempt started at or after t got its 201.
func (l *load) firstSuccessAfter(t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.successes) - 1; i >= 0; i-- {
		if !l.successes[i].Before(t) {
			return true
		}
	}
	return false
}

// snapshot copies the logical requests; one still running has no Outcome.
func (l *load) snapshot() []logical {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]logical, len(l.requests))
	for i, r := range l.requests {
		out[i] = *r
	}
	return out
}

// place runs one logical request to its end and then publishes the result.
func (l *load) place(shared *logical) {
	r := &logical{Key: shared.Key, Start: shared.Start}
	defer func() {
		l.mu.Lock()
		*shared = *r
		l.mu.Unlock()
	}()
	body, _ := json.Marshal(map[string]any{
		"source":       map[string]string{"type": "tel", "target": "+15550001111"},
		"destinations": []map[string]string{{"type": "tel", "target": l.cfg.Number}},
		"metadata":     map[string]string{"fault_key": r.Key},
	})
	deadline := r.Start.Add(l.cfg.RetryFor)
	backoff := 200 * time.Millisecond
	for {
		a, ids := l.try(body, r.Key)
		r.Attempts = append(r.Attempts, a)
		r.Final = a
		switch {
		case a.Status == http.StatusCreated:
			r.Outcome, r.CallIDs, r.End = "created", ids, time.Now()
			l.mu.Lock()
			l.successes = append(l.successes, a.Start)
			l.mu.Unlock()
			return
		case retryable(a):
		default:
			r.Outcome, r.End = "refused", time.Now()
			return
		}
		wait := backoff
		if s, err := strconv.Atoi(a.RetryAfter); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		wait += time.Duration(randomInt(int64(wait / 4)))
		if time.Now().Add(wait).After(deadline) {
			r.Outcome, r.End = "undecided", time.Now()
			return
		}
		select {
		case <-l.abort.Done():
			r.Outcome, r.End = "undecided", time.Now()
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// retryable: a transport error, a timeout, 409 IDEMPOTENCY_KEY_IN_USE, 429 or any 5xx; the same
// key makes every retry safe.
func retryable(a attempt) bool {
	switch {
	case a.Status == 0, a.Status == http.StatusRequestTimeout, a.Status == http.StatusTooManyRequests, a.Status >= 500:
		return true
	case a.Status == http.StatusConflict && a.Reason == "IDEMPOTENCY_KEY_IN_USE":
		return true
	}
	return false
}

func (l *load) try(body []byte, key string) (attempt, []string) {
	a := attempt{Phase: l.phase.get(), Start: time.Now()}
	req, err := http.NewRequest("POST", l.cfg.API+"/v1.0/calls", bytes.NewReader(body))
	if err != nil {
		a.Err = err.Error()
		return a, nil
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.cfg.Token)
	req.Header.Set("Idempotency-Key", key)
	resp, err := l.hc.Do(req)
	if err != nil {
		a.Err = err.Error()
		return a, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a.Status, a.RequestID, a.RetryAfter = resp.StatusCode, resp.Header.Get("X-Request-Id"), resp.Header.Get("Retry-After")
	if resp.StatusCode == http.StatusCreated {
		var out struct {
			Calls []struct {
				ID string `json:"id"`
			} `json:"calls"`
		}
		if err := json.Unmarshal(b, &out); err != nil || len(out.Calls) == 0 {
			a.Status, a.Err = 0, fmt.Sprintf("201 with an unreadable body: %.200s", b)
			return a, nil
		}
		ids := make([]string, len(out.Calls))
		for i, c := range out.Calls {
			ids[i] = c.ID
		}
		return a, ids
	}
	var e struct {
		Error struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	a.Reason, a.Message = e.Error.Reason, e.Error.Message
	return a, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomInt(n int64) int64 {
	if n <= 0 {
		return 0
	}
	v, _ := rand.Int(rand.Reader, big.NewInt(n))
	return v.Int64()
}

// ---- the customer's webhook endpoint ---------------------------------------------------------

// delivery is one webhook request the receiver got.
type delivery struct {
	At        time.Time
	EventID   string
	EventType string
	CallID    string
	Sequence  int64
	Verified  bool
}

// hookReceiver is the customer's HTTP endpoint: it checks the X-VoIPBIN-Signature of every
// delivery and records it; it always answers 200.
type hookReceiver struct {
	URL    string
	secret atomic.Value
	srv    *http.Server

	mu         sync.Mutex
	deliveries []delivery
}

func startHookReceiver() (*hookReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookReceiver{URL: "http://" + ln.Addr().String() + "/hook"}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

func (h *hookReceiver) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var env struct {
		EventID    string `json:"event_id"`
		EventType  string `json:"event_type"`
		ResourceID string `json:"resource_id"`
		Sequence   int64  `json:"sequence"`
	}
	_ = json.Unmarshal(body, &env)
	d := delivery{At: time.Now(), EventID: env.EventID, EventType: env.EventType, CallID: env.ResourceID, Sequence: env.Sequence}
	if secret, ok := h.secret.Load().(string); ok && secret != "" {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		want := hex.EncodeToString(mac.Sum(nil))
		d.Verified = hmac.Equal([]byte(want), []byte(strings.ToLower(r.Header.Get("X-VoIPBIN-Signature"))))
	}
	h.mu.Lock()
	h.deliveries = append(h.deliveries, d)
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (h *hookReceiver) snapshot() []delivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]delivery(nil), h.deliveries...)
}

// ---- the customer's WebSocket subscriber ------------------------------------------------------

// wsEvent is an event envelope the subscriber received.
type wsEvent struct {
	At        time.Time
	EventID   string
	EventType string
	CallID    string
	Sequence  int64
}

// wsNotice is anything that tells the client it may have missed events: a close of the socket (or
// a failed read), or a frame that is neither an event nor an ack.
type wsNotice struct {
	At   time.Time
	What string
}

// wsReadTimeout is how long the subscriber waits for a frame or a ping (sent every 10 s) before it
// counts the socket as dead.
const wsReadTimeout = 35 * time.Second

// wsSubscriber keeps one subscription to a customer's call events open, reconnecting (and
// subscribing again) whenever the socket ends, as a well-behaved client does.
type wsSubscriber struct {
	url, token, topic string

	mu      sync.Mutex
	events  []wsEvent
	notices []wsNotice
	down    [][2]time.Time // intervals with no acknowledged subscription
	opens   int
}

func (s *wsSubscriber) run(ctx context.Context) {
	downSince := time.Now()
	for ctx.Err() == nil {
		conn, err := s.connect(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		s.mu.Lock()
		s.down = append(s.down, [2]time.Time{downSince, time.Now()})
		s.opens++
		s.mu.Unlock()
		// The server pings every 10 s: each ping (or frame) proves the socket alive.
		conn.SetPingHandler(func(data string) error {
			_ = conn.SetReadDeadline(time.Now().Add(wsReadTimeout))
			return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
		what := s.read(conn)
		stop()
		_ = conn.Close()
		downSince = time.Now()
		if ctx.Err() == nil {
			s.mu.Lock()
			s.notices = append(s.notices, wsNotice{At: downSince, What: what})
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	s.down = append(s.down, [2]time.Time{downSince, time.Now().Add(time.Hour)})
	s.mu.Unlock()
}

// connect dials, subscribes and waits for the ack.
func (s *wsSubscriber) connect(ctx context.Context) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, resp, err := d.DialContext(dctx, s.url+"?token="+url.QueryEscape(s.token), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	sub, _ := json.Marshal(map[string]any{"type": "subscribe", "id": "sub", "topics": []string{s.topic}})
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, sub); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			conn.Close()
			return nil, err
		}
		var f map[string]any
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		if f["type"] == "ack" {
			_ = conn.SetReadDeadline(time.Time{})
			return conn, nil
		}
		if f["type"] == "error" {
			conn.Close()
			return nil, fmt.Errorf("subscription refused: %s", b)
		}
		s.record(b, f) // an event that raced the ack
	}
}

// read records frames until the socket ends and says how it ended.
func (s *wsSubscriber) read(conn *websocket.Conn) string {
	for {
		_ = conn.SetReadDeadline(time.Now().Add(wsReadTimeout))
		_, b, err := conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return fmt.Sprintf("close %d %q", ce.Code, ce.Text)
			}
			return "read: " + err.Error()
		}
		var f map[string]any
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		s.record(b, f)
	}
}

func (s *wsSubscriber) record(raw []byte, f map[string]any) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, _ := f["event_id"].(string); id != "" {
		var env struct {
			EventID    string `json:"event_id"`
			EventType  string `json:"event_type"`
			ResourceID string `json:"resource_id"`
			Sequence   int64  `json:"sequence"`
		}
		_ = json.Unmarshal(raw, &env)
		s.events = append(s.events, wsEvent{At: now, EventID: env.EventID, EventType: env.EventType, CallID: env.ResourceID, Sequence: env.Sequence})
		return
	}
	if f["type"] == "ack" {
		return
	}
	s.notices = append(s.notices, wsNotice{At: now, What: fmt.Sprintf("frame %.200s", raw)})
}

func (s *wsSubscriber) snapshot() ([]wsEvent, []wsNotice, [][2]time.Time, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wsEvent(nil), s.events...), append([]wsNotice(nil), s.notices...),
		append([][2]time.Time(nil), s.down...), s.opens
}
