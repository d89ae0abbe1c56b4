package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
)

// Disconnect reasons (label of ws_disconnections_total).
const (
	causeClientClosed = "client_closed"
	causeReadTimeout  = "read_timeout"
	causeReadFailed   = "read_failed"
	causeWriteFailed  = "write_failed"
	causeSlowConsumer = "slow_consumer"
	causePolicy       = "policy_violation"
	causeUnavailable  = "unavailable"
	causeShutdown     = "shutdown"
)

// closeGrace is how long the server waits for the client's reply to its close frame.
const closeGrace = 2 * time.Second

// outFrame is one text message for the client.
type outFrame struct {
	data  []byte
	event bool // an event envelope (counted as delivered or dropped), not an ack or error
}

// conn is one client connection. The reader goroutine (the HTTP handler's) reads frames and owns
// scopes; the writer goroutine is the only one writing data frames; the fan-out only ever does a
// non-blocking send on the bounded send channel.
type conn struct {
	h     *Handler
	ws    *websocket.Conn
	ident Identity
	ctx   context.Context // for logs: request id and customer id

	send       chan outFrame
	closing    chan struct{} // closed once the connection is to end
	readerDone chan struct{}
	writerDone chan struct{}
	opened     time.Time

	scopes map[string]int // scope → number of topics naming it; reader goroutine only

	mu          sync.Mutex
	topics      map[string]Topic // canonical string → topic
	closed      bool
	closeCode   int
	closeReason string
	cause       string
	verified    time.Time // the last time Identity.Check said the credential stands
}

func newConn(ctx context.Context, h *Handler, ws *websocket.Conn, ident Identity) *conn {
	return &conn{h: h, ws: ws, ident: ident, ctx: ctx,
		send: make(chan outFrame, h.opts.SendBuffer), closing: make(chan struct{}),
		readerDone: make(chan struct{}), writerDone: make(chan struct{}), opened: time.Now(), verified: time.Now(),
		scopes: map[string]int{}, topics: map[string]Topic{}}
}

// serve runs the connection until it ends, then releases everything it held.
func (c *conn) serve() {
	stopExpiry := c.watchExpiry()
	defer stopExpiry()
	go c.writeLoop()
	c.readLoop()
	close(c.readerDone)
	<-c.writerDone
	_ = c.ws.Close()
	c.cleanup()
}

// closeWith ends the connection with a close frame carrying code and reason; the first call wins.
func (c *conn) closeWith(code int, reason, cause string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(code, reason, cause)
}

func (c *conn) closeLocked(code int, reason, cause string) {
	if c.closed {
		return
	}
	c.closed, c.closeCode, c.closeReason, c.cause = true, code, reason, cause
	close(c.closing)
}

// offerLocked queues f without blocking; a full buffer marks a slow consumer and ends the
// connection. Called with c.mu held, so frames queue in the order their causes happened.
func (c *conn) offerLocked(f outFrame) {
	if c.closed {
		if f.event {
			c.h.metrics.dropped.WithLabelValues(dropDisconnected).Inc()
		}
		return
	}
	select {
	case c.send <- f:
	default:
		if f.event {
			c.h.metrics.dropped.WithLabelValues(dropSlowConsumer).Inc()
		}
		c.closeLocked(websocket.ClosePolicyViolation,
			closeText(ReasonSlowConsumer, fmt.Sprintf("more than %d frames waiting to be sent", cap(c.send))), causeSlowConsumer)
	}
}

// deliver queues the event frame if one of the connection's topics matches ev.
func (c *conn) deliver(ev event.Event, frame []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.topics {
		if t.Matches(ev) {
			c.offerLocked(outFrame{data: frame, event: true})
			return
		}
	}
}

func (c *conn) isClosing() bool {
	select {
	case <-c.closing:
		return true
	default:
		return false
	}
}

func (c *conn) readLoop() {
	o := c.h.opts
	c.ws.SetReadLimit(o.MaxFrameBytes)
	extend := func() { _ = c.ws.SetReadDeadline(time.Now().Add(o.ReadTimeout)) }
	extend()
	c.ws.SetPongHandler(func(string) error {
		if !c.isClosing() { // once closing, the close grace bounds the wait instead
			extend()
		}
		return nil
	})
	for {
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		if c.isClosing() { // waiting for the client's close reply: ignore what still comes
			continue
		}
		extend()
		if typ != websocket.TextMessage {
			c.closeWith(websocket.CloseUnsupportedData, closeText(ReasonInvalidFrame, "frames must be JSON text"), causePolicy)
			continue
		}
		c.handleFrame(data)
	}
}

func (c *conn) readFailed(err error) {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case errors.As(err, &ce):
		c.closeWith(websocket.CloseNormalClosure, "", causeClientClosed)
	case errors.As(err, &ne) && ne.Timeout():
		c.closeWith(websocket.CloseGoingAway, closeText(ReasonReadTimeout, "no frame or pong within the read deadline"), causeReadTimeout)
	case errors.Is(err, websocket.ErrReadLimit):
		c.closeWith(websocket.CloseMessageTooBig, closeText(ReasonInvalidFrame, "frame too large"), causePolicy)
	default:
		c.closeWith(websocket.CloseAbnormalClosure, "", causeReadFailed)
	}
}

func (c *conn) writeLoop() {
	defer close(c.writerDone)
	o := c.h.opts
	ping := time.NewTicker(o.PingInterval)
	defer ping.Stop()
	for {
		select { // a pending close goes before queued frames
		case <-c.closing:
			c.finish()
			return
		default:
		}
		select {
		case <-c.closing:
			c.finish()
			return
		case f := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(o.WriteTimeout))
			if err := c.ws.WriteMessage(websocket.TextMessage, f.data); err != nil {
				if f.event {
					c.h.metrics.dropped.WithLabelValues(dropDisconnected).Inc()
				}
				c.writeFailed()
				return
			}
			if f.event {
				c.h.metrics.delivered.Inc()
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(o.WriteTimeout)); err != nil {
				c.writeFailed()
				return
			}
		}
	}
}

// writeFailed ends a connection the server can no longer write to; closing the socket also ends
// the reader.
func (c *conn) writeFailed() {
	c.closeWith(websocket.CloseAbnormalClosure, "", causeWriteFailed)
	_ = c.ws.NetConn().Close()
}

// finish sends the close frame and waits a little for the client's reply (which ends the reader),
// then closes the socket.
func (c *conn) finish() {
	c.mu.Lock()
	code, reason := c.closeCode, c.closeReason
	c.mu.Unlock()
	if code != websocket.CloseAbnormalClosure { // 1006 is never sent on the wire
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	}
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-c.readerDone:
	case <-t.C:
	}
	_ = c.ws.NetConn().Close()
}

// handleFrame applies one client frame and answers it: ack or error when it carried an id,
// otherwise silence on success and a close on failure.
func (c *conn) handleFrame(data []byte) {
	f, err := parseFrame(data, c.h.opts.MaxTopics)
	if err == nil {
		var ack []byte
		if hasID(f.ID) {
			ack = marshalAck(f.ID)
		}
		switch f.Type {
		case frameSubscribe:
			err = c.subscribe(f.Topics, ack)
		case frameUnsubscribe:
			err = c.unsubscribe(f.Topics, ack)
		}
	}
	if err != nil {
		c.refuse(f.ID, err)
	}
}

func (c *conn) refuse(id json.RawMessage, err error) {
	e := apierr.From(err)
	if e.Status == apierr.Internal || e.Status == apierr.Unavailable {
		c.h.log.ErrorContext(c.ctx, "websocket subscription failed", "error", err)
	}
	if hasID(id) {
		c.mu.Lock()
		c.offerLocked(outFrame{data: marshalError(id, e)})
		c.mu.Unlock()
		return
	}
	cause := causePolicy
	if closeCodeFor(e) == websocket.CloseTryAgainLater {
		cause = causeUnavailable
	}
	c.h.log.InfoContext(c.ctx, "websocket closed for a refused frame", "reason", e.Reason, "message", e.Message)
	c.closeWith(closeCodeFor(e), closeText(e.Reason, e.Message), cause)
}

// subscribe adds topics. All of them are checked first: a frame is applied whole or not at all.
// The topics are added, and ack (if any) queued, once the queue bindings exist, so events
// published after the ack reach the client; both happen under c.mu, so no event of the new topics
// is queued before the ack.
func (c *conn) subscribe(raw []string, ack []byte) error {
	var add []Topic
	seen := map[string]bool{}
	for _, s := range raw {
		t, err := ParseTopic(s)
		if err != nil {
			return err
		}
		if !t.AllowedFor(c.ident) {
			return apierr.Newf(apierr.PermissionDenied, ReasonPermissionDenied,
				"topic %q: a customer may subscribe only to its own topics", t.String())
		}
		key := t.String()
		if seen[key] {
			continue
		}
		seen[key] = true
		add = append(add, t)
	}
	c.mu.Lock()
	fresh := add[:0]
	for _, t := range add {
		if _, ok := c.topics[t.String()]; !ok {
			fresh = append(fresh, t)
		}
	}
	total := len(c.topics) + len(fresh)
	c.mu.Unlock()
	if total > c.h.opts.MaxTopics {
		return apierr.Newf(apierr.InvalidArgument, ReasonTooManyTopics, "a connection may hold at most %d topics", c.h.opts.MaxTopics)
	}

	var acquired []string
	for _, t := range fresh {
		if c.scopes[t.Customer] > 0 || contains(acquired, t.Customer) {
			continue
		}
		if err := c.h.acquire(c.ctx, t.Customer); err != nil {
			for _, s := range acquired {
				c.h.release(c.ctx, s)
			}
			return fmt.Errorf("%w: %w", apierr.New(apierr.Unavailable, ReasonServiceUnavailable,
				"the event stream is unavailable; try again"), err)
		}
		acquired = append(acquired, t.Customer)
	}
	for _, s := range acquired {
		c.h.hub.add(s, c)
	}
	for _, t := range fresh {
		c.scopes[t.Customer]++
	}
	c.h.metrics.subscriptions.Add(float64(len(fresh)))
	c.mu.Lock()
	for _, t := range fresh {
		c.topics[t.String()] = t
	}
	if ack != nil {
		c.offerLocked(outFrame{data: ack})
	}
	c.mu.Unlock()
	return nil
}

// unsubscribe removes topics (topics not held are ignored), unbinds scopes no longer held, then
// queues ack: no event of a removed topic is queued after the topics went, so none follows the ack.
func (c *conn) unsubscribe(raw []string, ack []byte) error {
	var remove []Topic
	for _, s := range raw {
		t, err := ParseTopic(s)
		if err != nil {
			return err
		}
		remove = append(remove, t)
	}
	var gone []Topic
	c.mu.Lock()
	for _, t := range remove {
		if _, ok := c.topics[t.String()]; ok {
			delete(c.topics, t.String())
			gone = append(gone, t)
		}
	}
	c.mu.Unlock()
	c.h.metrics.subscriptions.Sub(float64(len(gone)))
	for _, t := range gone {
		if c.scopes[t.Customer]--; c.scopes[t.Customer] == 0 {
			delete(c.scopes, t.Customer)
			c.h.hub.remove(t.Customer, c)
			c.h.release(c.ctx, t.Customer)
		}
	}
	if ack != nil {
		c.mu.Lock()
		c.offerLocked(outFrame{data: ack})
		c.mu.Unlock()
	}
	return nil
}

// cleanup runs after both goroutines ended: it drops what was still queued and gives back the
// scopes.
func (c *conn) cleanup() {
	c.mu.Lock()
	n := len(c.topics)
	c.topics = map[string]Topic{}
	cause, code, reason := c.cause, c.closeCode, c.closeReason
	c.mu.Unlock()
	c.h.metrics.subscriptions.Sub(float64(n))
	for scope := range c.scopes {
		c.h.hub.remove(scope, c)
		c.h.release(c.ctx, scope)
	}
	c.scopes = nil
	for drained := false; !drained; {
		select {
		case f := <-c.send:
			if f.event {
				c.h.metrics.dropped.WithLabelValues(dropDisconnected).Inc()
			}
		default:
			drained = true
		}
	}
	c.h.metrics.disconnects.WithLabelValues(cause).Inc()
	c.h.log.InfoContext(c.ctx, "websocket disconnected", "reason", cause, "close_code", code, "close_reason", reason,
		"duration_ms", time.Since(c.opened).Milliseconds())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
