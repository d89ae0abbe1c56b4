package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/telemetry"
)

const directReplyTo = "amq.rabbitmq.reply-to"

// DefaultTimeout applies when the caller's ctx has no deadline.
const DefaultTimeout = 3 * time.Second

// ClientOptions tune a Client.
type ClientOptions struct {
	// BreakerFailures is how many consecutive transport failures open a target's breaker (default 5).
	BreakerFailures int
	// BreakerCooldown is how long an open breaker refuses calls before letting one probe through
	// (default 2 s).
	BreakerCooldown time.Duration
}

// Client sends requests and waits for replies on one channel consuming direct reply-to. It is
// safe for any number of concurrent calls.
type Client struct {
	conn *amqp.Conn
	log  *slog.Logger
	opts ClientOptions

	mu       sync.Mutex
	ch       *amqp.Channel // the channel consuming reply-to; requests must be published on it
	ready    chan struct{}
	pending  map[string]chan reply
	breakers map[string]*breaker

	stop context.CancelFunc
	done chan struct{}
}

var (
	errConnLost  = apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "connection to the message broker was lost")
	errNoService = apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "no service is consuming the target queue")
)

// NewClient starts a client on conn.
func NewClient(conn *amqp.Conn, log *slog.Logger, opts ClientOptions) *Client {
	if opts.BreakerFailures <= 0 {
		opts.BreakerFailures = 5
	}
	if opts.BreakerCooldown <= 0 {
		opts.BreakerCooldown = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{conn: conn, log: log, opts: opts, ready: make(chan struct{}),
		pending: map[string]chan reply{}, breakers: map[string]*breaker{}, stop: cancel, done: make(chan struct{})}
	go c.replyLoop(ctx)
	return c
}

// Close stops the client; calls in flight fail.
func (c *Client) Close() {
	c.stop()
	<-c.done
}

func (c *Client) replyLoop(ctx context.Context) {
	defer close(c.done)
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if err := c.consumeReplies(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("rpc reply consumer stopped, restarting", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(min(attempt+1, 20)) * 50 * time.Millisecond):
			}
		}
	}
	c.failPending(errConnLost)
}

func (c *Client) consumeReplies(ctx context.Context) error {
	ch, err := c.conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	deliveries, err := ch.Consume(directReplyTo, "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume direct reply-to: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 64))
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))

	c.mu.Lock()
	c.ch = ch
	close(c.ready)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.ch = nil
		c.ready = make(chan struct{})
		c.mu.Unlock()
		// Replies to requests sent on this channel can no longer arrive.
		c.failPending(errConnLost)
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-closed:
			return fmt.Errorf("reply channel closed: %v", err)
		case r := <-returns:
			c.deliver(r.CorrelationId, reply{err: errNoService})
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("reply deliveries closed")
			}
			var resp Response
			if err := json.Unmarshal(d.Body, &resp); err != nil {
				resp = Response{StatusCode: 500, Error: apierr.New(apierr.Internal, apierr.ReasonInternal, "malformed RPC reply")}
			}
			c.deliver(d.CorrelationId, reply{resp: &resp})
		}
	}
}

// reply is what a pending call receives: the server's response, or a transport error.
type reply struct {
	resp *Response
	err  *apierr.Error
}

func (c *Client) deliver(id string, r reply) {
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ok {
		ch <- r
	}
}

func (c *Client) failPending(err *apierr.Error) {
	c.mu.Lock()
	p := c.pending
	c.pending = map[string]chan reply{}
	c.mu.Unlock()
	for _, ch := range p {
		ch <- reply{err: err}
	}
}

func (c *Client) breaker(queue string) *breaker {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.breakers[queue]
	if !ok {
		b = &breaker{failures: c.opts.BreakerFailures, cooldown: c.opts.BreakerCooldown}
		c.breakers[queue] = b
	}
	return b
}

// Call sends req to queue and waits for the reply until ctx's deadline (DefaultTimeout if none).
// The request id and customer id in ctx travel in the headers. A non-2xx reply returns the reply
// and its *apierr.Error; a timeout is UNAVAILABLE/REQUEST_TIMEOUT; an open breaker, a lost
// connection or a queue nobody serves is UNAVAILABLE/SERVICE_UNAVAILABLE.
func (c *Client) Call(ctx context.Context, queue string, req Request) (*Response, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	b := c.breaker(queue)
	if !b.allow(time.Now()) {
		return nil, apierr.Newf(apierr.Unavailable, apierr.ReasonServiceUnavailable, "%s is unavailable (circuit open)", queue)
	}

	resp, err := c.roundTrip(ctx, queue, req, deadline)
	if errors.Is(err, context.Canceled) {
		b.record(time.Now(), true) // the caller gave up: says nothing about the target
		return nil, err
	}
	// Only transport failures count against the breaker; an error reply proves the target is alive.
	b.record(time.Now(), err == nil)
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return resp, resp.Error
	}
	return resp, nil
}

func (c *Client) roundTrip(ctx context.Context, queue string, req Request, deadline time.Time) (*Response, error) {
	now := time.Now()
	req.MessageID = uuid.NewString()
	req.Timestamp = now.UTC()
	req.Deadline = deadline.UTC()
	headers := map[string]string{}
	for k, v := range req.Headers {
		headers[k] = v
	}
	if id := telemetry.RequestID(ctx); id != "" {
		headers[HeaderRequestID] = id
	}
	if id := telemetry.CustomerID(ctx); id != "" && headers[HeaderCustomerID] == "" {
		headers[HeaderCustomerID] = id
	}
	req.Headers = headers
	body, err := req.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("marshal request: %w", err)
	}
	amqpHeaders := amqp.Table{}
	for k, v := range headers {
		amqpHeaders[k] = v
	}
	remaining := time.Until(deadline)
	if remaining <= 0 {
		return nil, timeoutError(queue)
	}

	replyc := make(chan reply, 1)
	for {
		c.mu.Lock()
		ch, ready := c.ch, c.ready
		if ch == nil {
			c.mu.Unlock()
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return nil, timeoutError(queue)
			}
		}
		c.pending[req.MessageID] = replyc
		c.mu.Unlock()
		err = ch.PublishWithContext(ctx, "", queue, true, false, amqp.Publishing{
			ContentType: "application/json", MessageId: req.MessageID, CorrelationId: req.MessageID,
			ReplyTo: directReplyTo, Timestamp: now, Headers: amqpHeaders, Body: body,
			Expiration: strconv.FormatInt(max(remaining.Milliseconds(), 1), 10),
		})
		if err != nil {
			c.mu.Lock()
			delete(c.pending, req.MessageID)
			c.mu.Unlock()
			return nil, apierr.Newf(apierr.Unavailable, apierr.ReasonServiceUnavailable, "sending to %s failed", queue)
		}
		break
	}
	select {
	case r := <-replyc:
		if r.err != nil {
			return nil, r.err
		}
		return r.resp, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, req.MessageID)
		c.mu.Unlock()
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, ctx.Err()
		}
		return nil, timeoutError(queue)
	}
}

func timeoutError(queue string) *apierr.Error {
	return apierr.Newf(apierr.Unavailable, apierr.ReasonRequestTimeout, "%s did not answer in time", queue)
}

// breaker opens after n consecutive transport failures, refuses calls for cooldown, then lets one
// probe through: its success closes the breaker, its failure opens it again.
type breaker struct {
	mu        sync.Mutex
	failures  int
	cooldown  time.Duration
	count     int
	openUntil time.Time
	probing   bool
}

func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.count < b.failures {
		return true
	}
	if now.Before(b.openUntil) || b.probing {
		return false
	}
	b.probing = true
	return true
}

func (b *breaker) record(now time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if ok {
		b.count = 0
		return
	}
	b.count++
	if b.count >= b.failures {
		b.openUntil = now.Add(b.cooldown)
	}
}
