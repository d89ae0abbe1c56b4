// Package amqp owns the process's one RabbitMQ connection. It reconnects by itself with backoff,
// re-declares the registered topology (exchanges, queues, bindings) on every new connection, resumes
// consumers, and publishes through a pool of confirm-mode channels so a publish returns only once the
// broker has taken the message. Channels are never shared between goroutines without a lock.
package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Re-exported so users of this package need not import amqp091 for the common types.
type (
	Channel    = amqp.Channel
	Delivery   = amqp.Delivery
	Publishing = amqp.Publishing
	Table      = amqp.Table
)

// Delivery modes.
const (
	Transient  = amqp.Transient
	Persistent = amqp.Persistent
)

var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("amqp: connection closed")
	// ErrUnroutable is returned by a mandatory publish that no queue took.
	ErrUnroutable = errors.New("amqp: message unroutable")
	// ErrNacked is returned when the broker refused a message.
	ErrNacked = errors.New("amqp: message nacked by broker")
)

// Topology declares exchanges, queues and bindings on ch. It runs on every (re)connection.
type Topology func(ch *Channel) error

// Conn is a self-healing connection.
type Conn struct {
	url string
	log *slog.Logger

	mu       sync.Mutex
	conn     *amqp.Connection
	ready    chan struct{} // closed while conn is usable
	topology []Topology
	pool     chan *pubChannel // confirm-mode channels
	plain    chan *pubChannel // channels without confirms, for fire-and-forget publishes
	closed   bool

	done chan struct{}
	wg   sync.WaitGroup
}

// Dial connects to url, retrying with backoff until ctx ends, and keeps the connection up until
// Close.
func Dial(ctx context.Context, url string, log *slog.Logger) (*Conn, error) {
	c := &Conn{url: url, log: log, ready: make(chan struct{}), pool: make(chan *pubChannel, 32), plain: make(chan *pubChannel, 32), done: make(chan struct{})}
	conn, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conn = conn
	close(c.ready)
	c.mu.Unlock()
	c.wg.Add(1)
	go c.supervise(conn)
	return c, nil
}

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 6) // 100 ms … 6.4 s
	d = min(d, 5*time.Second)
	return d/2 + rand.N(d/2+1)
}

// connect dials until it succeeds, ctx ends or Close is called, and declares the topology.
func (c *Conn) connect(ctx context.Context) (*amqp.Connection, error) {
	for attempt := 0; ; attempt++ {
		conn, err := amqp.DialConfig(c.url, amqp.Config{Heartbeat: 10 * time.Second, Locale: "en_US",
			Properties: amqp.Table{"connection_name": "voipbin"}})
		if err == nil {
			if err = c.declareAll(conn); err == nil {
				return conn, nil
			}
			_ = conn.Close()
		}
		c.log.Warn("rabbitmq connect failed, retrying", "attempt", attempt+1, "error", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect rabbitmq: %w (last error: %v)", ctx.Err(), err)
		case <-c.done:
			return nil, ErrClosed
		case <-time.After(backoff(attempt)):
		}
	}
}

func (c *Conn) declareAll(conn *amqp.Connection) error {
	c.mu.Lock()
	topo := append([]Topology(nil), c.topology...)
	c.mu.Unlock()
	if len(topo) == 0 {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	for _, t := range topo {
		if err := t(ch); err != nil {
			return fmt.Errorf("declare topology: %w", err)
		}
	}
	return nil
}

func (c *Conn) supervise(conn *amqp.Connection) {
	defer c.wg.Done()
	for {
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case <-c.done:
			return
		case err := <-closed:
			c.log.Warn("rabbitmq connection lost, reconnecting", "error", err)
		}
		c.mu.Lock()
		c.conn = nil
		c.ready = make(chan struct{})
		c.mu.Unlock()
		c.drainPool()
		var err error
		conn, err = c.connect(context.Background())
		if err != nil { // only ErrClosed ends connect without a connection
			return
		}
		c.mu.Lock()
		c.conn = conn
		close(c.ready)
		c.mu.Unlock()
		c.log.Info("rabbitmq reconnected")
	}
}

// Declare runs t now and again after every reconnection.
func (c *Conn) Declare(ctx context.Context, t Topology) error {
	c.mu.Lock()
	c.topology = append(c.topology, t)
	c.mu.Unlock()
	ch, err := c.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	return t(ch)
}

// current waits until the connection is usable.
func (c *Conn) current(ctx context.Context) (*amqp.Connection, error) {
	for {
		c.mu.Lock()
		conn, ready, closed := c.conn, c.ready, c.closed
		c.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if conn != nil && !conn.IsClosed() {
			return conn, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("rabbitmq unavailable: %w", ctx.Err())
		case <-c.done:
			return nil, ErrClosed
		case <-time.After(50 * time.Millisecond): // conn closed but supervisor not yet noticed
		}
	}
}

// Channel opens a new channel on the current connection, waiting for a reconnection if needed.
// The caller owns it and must not share it between goroutines without a lock.
func (c *Conn) Channel(ctx context.Context) (*Channel, error) {
	conn, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	return conn.Channel()
}

// Check reports whether the connection is up, for /readyz.
func (c *Conn) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil || c.conn.IsClosed() {
		return errors.New("rabbitmq disconnected")
	}
	return nil
}

// Close stops reconnecting and closes the connection.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conn := c.conn
	close(c.done)
	c.mu.Unlock()
	c.drainPool()
	var err error
	if conn != nil {
		err = conn.Close()
	}
	c.wg.Wait()
	return err
}

type pubChannel struct {
	ch      *amqp.Channel
	confirm bool
	returns chan amqp.Return
}

func (c *Conn) drainPool() {
	for _, pool := range []chan *pubChannel{c.pool, c.plain} {
		for drained := false; !drained; {
			select {
			case p := <-pool:
				_ = p.ch.Close()
			default:
				drained = true
			}
		}
	}
}

func (c *Conn) getPub(ctx context.Context, confirm bool) (*pubChannel, error) {
	pool := c.pool
	if !confirm {
		pool = c.plain
	}
	for {
		select {
		case p := <-pool:
			if !p.ch.IsClosed() {
				return p, nil
			}
			continue
		default:
		}
		ch, err := c.Channel(ctx)
		if err != nil {
			return nil, err
		}
		if confirm {
			if err := ch.Confirm(false); err != nil {
				_ = ch.Close()
				return nil, err
			}
		}
		return &pubChannel{ch: ch, confirm: confirm, returns: ch.NotifyReturn(make(chan amqp.Return, 16))}, nil
	}
}

func (c *Conn) putPub(p *pubChannel) {
	if p.ch.IsClosed() {
		return
	}
	pool := c.pool
	if !p.confirm {
		pool = c.plain
	}
	select {
	case pool <- p:
	default:
		_ = p.ch.Close()
	}
}

// PublishOptions tune one publish.
type PublishOptions struct {
	// Mandatory makes a message that no queue takes fail with ErrUnroutable.
	Mandatory bool
	// NoConfirm returns as soon as the message is written, without waiting for the broker's confirm.
	NoConfirm bool
}

// Publish sends msg and, unless opts.NoConfirm, waits for the broker's confirm. If the connection
// is down it waits for the reconnection until ctx ends.
func (c *Conn) Publish(ctx context.Context, exchange, key string, msg Publishing, opts PublishOptions) error {
	p, err := c.getPub(ctx, !opts.NoConfirm)
	if err != nil {
		return err
	}
	for drained := false; !drained; { // returns left by an earlier, abandoned publish
		select {
		case <-p.returns:
		default:
			drained = true
		}
	}
	if opts.NoConfirm {
		err := p.ch.PublishWithContext(ctx, exchange, key, opts.Mandatory, false, msg)
		if err != nil {
			_ = p.ch.Close()
			return fmt.Errorf("publish to %q/%q: %w", exchange, key, err)
		}
		c.putPub(p)
		return nil
	}
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, opts.Mandatory, false, msg)
	if err != nil {
		_ = p.ch.Close()
		return fmt.Errorf("publish to %q/%q: %w", exchange, key, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		_ = p.ch.Close() // a confirm may still arrive; don't reuse the channel
		return fmt.Errorf("publish to %q/%q: waiting for confirm: %w", exchange, key, err)
	}
	defer c.putPub(p)
	if !ok {
		return ErrNacked
	}
	if opts.Mandatory {
		// The broker sends basic.return before the ack of an unroutable mandatory message, and the
		// client dispatches both from one reader goroutine, so a return is already buffered here.
		select {
		case r := <-p.returns:
			if r.MessageId == msg.MessageId {
				return fmt.Errorf("publish to %q/%q: %w", exchange, key, ErrUnroutable)
			}
		default:
		}
	}
	return nil
}

// ConsumeSpec says what to consume and how.
type ConsumeSpec struct {
	// Setup declares what the consumer needs and returns the queue to consume (which may be a
	// server-named one). It runs on every (re)connection.
	Setup func(ch *Channel) (queue string, err error)
	// Prefetch bounds unacked deliveries (default Workers*2).
	Prefetch int
	// Workers is the number of goroutines calling the handler (default 1: in order).
	Workers int
	// AutoAck consumes without acknowledgements.
	AutoAck bool
	// Exclusive makes this the queue's only consumer.
	Exclusive bool
	// Resumed, when set, is called after the consumer is back following an interruption (the
	// channel or connection was lost after it had started), with the time the interruption was
	// noticed. It runs once the new consumer is registered and before any of its deliveries is
	// handled, so a consumer of a server-named queue, which lost what the old queue held, can say
	// so before handling what the new one brings.
	Resumed func(interrupted time.Time)
}

// Consume runs handle for each delivery until ctx ends, resuming after reconnections. The handler
// acks or nacks the delivery itself (unless AutoAck). When ctx ends, the consumer is cancelled,
// deliveries already being handled finish (their ctx is not cancelled), prefetched ones not yet
// started are requeued, and Consume returns nil.
func (c *Conn) Consume(ctx context.Context, spec ConsumeSpec, handle func(context.Context, Delivery)) error {
	if spec.Workers <= 0 {
		spec.Workers = 1
	}
	if spec.Prefetch <= 0 {
		spec.Prefetch = spec.Workers * 2
	}
	var interrupted time.Time // zero: no interruption since the consumer last started
	started := func() {
		if !interrupted.IsZero() && spec.Resumed != nil {
			spec.Resumed(interrupted)
		}
		interrupted = time.Time{}
	}
	for attempt := 0; ; attempt++ {
		consumed, err := c.consumeOnce(ctx, spec, handle, started)
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return nil
		}
		if consumed && interrupted.IsZero() {
			interrupted = time.Now()
		}
		c.log.Warn("consumer stopped, resuming", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff(min(attempt, 3))):
		}
	}
}

// consumeOnce consumes on one channel until ctx ends or the channel is lost. consumed reports
// whether the consumer got as far as registering (and so calling started).
func (c *Conn) consumeOnce(ctx context.Context, spec ConsumeSpec, handle func(context.Context, Delivery), started func()) (consumed bool, _ error) {
	ch, err := c.Channel(ctx)
	if err != nil {
		return false, err
	}
	defer ch.Close()
	if err := ch.Qos(spec.Prefetch, 0, false); err != nil {
		return false, err
	}
	queue, err := spec.Setup(ch)
	if err != nil {
		return false, fmt.Errorf("consumer setup: %w", err)
	}
	tag := "voipbin-" + randomTag()
	deliveries, err := ch.Consume(queue, tag, spec.AutoAck, spec.Exclusive, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("consume %q: %w", queue, err)
	}
	started() // before the workers: nothing of the new consumer is handled yet
	// Workers read the delivery channel directly: one hand-off less per message than a dispatcher.
	hctx := context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	for range spec.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries {
				if ctx.Err() != nil { // prefetched but not started: back to the queue
					if !spec.AutoAck {
						_ = d.Nack(false, true)
					}
					continue
				}
				handle(hctx, d)
			}
		}()
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	select {
	case <-ctx.Done():
		_ = ch.Cancel(tag, false) // the library closes deliveries once the broker confirms
		wg.Wait()
		return true, nil
	case err := <-closed:
		wg.Wait()
		return true, fmt.Errorf("channel closed: %v", err)
	}
}

func randomTag() string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	for i := range b {
		b[i] = letters[rand.N(len(letters))]
	}
	return string(b)
}

// Message is one publish of a batch.
type Message struct {
	Exchange   string
	Key        string
	Publishing Publishing
}

// PublishBatch publishes msgs in order on one channel and waits for every confirm: nil means the
// broker has taken all of them; an error means some may have been taken and the caller must be
// ready to publish them again.
func (c *Conn) PublishBatch(ctx context.Context, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	p, err := c.getPub(ctx, true)
	if err != nil {
		return err
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for _, m := range msgs {
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.Key, false, false, m.Publishing)
		if err != nil {
			_ = p.ch.Close()
			return fmt.Errorf("publish to %q/%q: %w", m.Exchange, m.Key, err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			_ = p.ch.Close()
			return fmt.Errorf("waiting for confirm: %w", err)
		}
		if !ok {
			c.putPub(p)
			return ErrNacked
		}
	}
	c.putPub(p)
	return nil
}
