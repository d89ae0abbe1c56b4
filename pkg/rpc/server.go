package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/outage"
	"voipbin/pkg/telemetry"
)

// ServerOptions tune a Server.
type ServerOptions struct {
	// Workers is the number of requests handled at once (default 32).
	Workers int
	// Exclusive declares the queue exclusive and auto-deleted: a per-node queue that vanishes with
	// its node, so callers get an immediate "unroutable" instead of waiting for a dead node.
	Exclusive bool
	// Registerer receives the server's metrics (nil: none).
	Registerer prometheus.Registerer
}

// Server serves one request queue.
type Server struct {
	conn   *amqp.Conn
	queue  string
	log    *slog.Logger
	opts   ServerOptions
	router router

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	expired  prometheus.Counter
}

// NewServer makes a server for queue; add routes with Handle, then Run.
func NewServer(conn *amqp.Conn, queue string, log *slog.Logger, opts ServerOptions) *Server {
	if opts.Workers <= 0 {
		opts.Workers = 32
	}
	s := &Server{conn: conn, queue: queue, log: log.With("queue", queue), opts: opts,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rpc_server_requests_total",
			Help: "RPC requests handled, by route pattern and reply status code.", ConstLabels: prometheus.Labels{"queue": queue}},
			[]string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rpc_server_handling_seconds",
			Help: "RPC handling latency by route pattern.", ConstLabels: prometheus.Labels{"queue": queue},
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"route"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "rpc_server_expired_requests_total",
			Help: "Requests dropped unrun because their deadline passed while queued.", ConstLabels: prometheus.Labels{"queue": queue}}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.requests, s.latency, s.expired)
	}
	return s
}

// Handle registers h for a pattern like "GET /v1/calls/{id}".
func (s *Server) Handle(pattern string, h HandlerFunc) { s.router.handle(pattern, h) }

// Run consumes until ctx ends, then lets requests in flight finish and returns.
func (s *Server) Run(ctx context.Context) error {
	s.log.Info("rpc server consuming")
	return s.conn.Consume(ctx, amqp.ConsumeSpec{
		Workers:   s.opts.Workers,
		Exclusive: s.opts.Exclusive,
		Setup: func(ch *amqp.Channel) (string, error) {
			var err error
			if s.opts.Exclusive {
				_, err = ch.QueueDeclare(s.queue, false, true, true, false, nil)
			} else {
				_, err = ch.QueueDeclare(s.queue, true, false, false, false, nil)
			}
			return s.queue, err
		},
	}, s.serve)
}

func (s *Server) serve(base context.Context, d amqp.Delivery) {
	defer func() { _ = d.Ack(false) }() // after the reply: a crash before here redelivers the request

	var req Request
	if err := json.Unmarshal(d.Body, &req); err != nil {
		s.reply(base, d, &Response{StatusCode: 400, Error: apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "malformed RPC envelope")})
		return
	}
	deadline := req.Deadline
	if deadline.IsZero() && d.Expiration != "" && !d.Timestamp.IsZero() {
		if ms, err := strconv.Atoi(d.Expiration); err == nil {
			deadline = d.Timestamp.Add(time.Duration(ms) * time.Millisecond)
		}
	}
	ctx := base
	if id := req.Headers[HeaderRequestID]; id != "" {
		ctx = telemetry.WithRequestID(ctx, id)
	}
	if id := req.Headers[HeaderCustomerID]; id != "" {
		ctx = telemetry.WithCustomerID(ctx, id)
	}
	if !deadline.IsZero() {
		if time.Until(deadline) <= 0 {
			s.expired.Inc()
			s.log.WarnContext(ctx, "dropping request whose deadline passed while queued", "method", req.Method, "route", req.Route)
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}

	start := time.Now()
	resp, pattern := s.dispatch(ctx, &req)
	resp.MessageID = req.MessageID
	resp.Timestamp = time.Now().UTC()
	s.requests.WithLabelValues(pattern, strconv.Itoa(resp.StatusCode)).Inc()
	s.latency.WithLabelValues(pattern).Observe(time.Since(start).Seconds())
	if resp.Error != nil && resp.StatusCode >= 500 {
		s.log.ErrorContext(ctx, "rpc request failed", "method", req.Method, "route", req.Route, "status", resp.StatusCode, "reason", resp.Error.Reason)
	}
	if ctx.Err() != nil { // the caller has given up; the reply would be dropped anyway
		s.log.WarnContext(ctx, "rpc request finished after its deadline", "method", req.Method, "route", req.Route, "took", time.Since(start))
	}
	s.reply(ctx, d, resp)
}

func (s *Server) dispatch(ctx context.Context, req *Request) (resp *Response, pattern string) {
	pattern = "unmatched"
	u, err := url.Parse(req.Route)
	if err != nil {
		return errorResponse(apierr.Newf(apierr.InvalidArgument, apierr.ReasonInvalidArgument, "bad route %q", req.Route)), pattern
	}
	rt, params, err := s.router.match(req.Method, u.Path)
	if err != nil {
		return errorResponse(err), pattern
	}
	pattern = rt.pattern
	req.params, req.query = params, u.Query()
	defer func() {
		if p := recover(); p != nil {
			s.log.ErrorContext(ctx, "rpc handler panicked", "route", pattern, "panic", fmt.Sprint(p))
			resp = errorResponse(apierr.New(apierr.Internal, apierr.ReasonInternal, "internal error"))
		}
	}()
	resp, err = rt.h(ctx, req)
	if err != nil {
		if _, typed := apierr.As(err); !typed && !errors.Is(err, context.DeadlineExceeded) {
			s.log.ErrorContext(ctx, "rpc handler error", "route", pattern, "error", err)
		}
		return errorResponse(err), pattern
	}
	if resp == nil {
		resp = &Response{StatusCode: 204}
	}
	return resp, pattern
}

// errorResponse is the RPC edge's one mapping of a handler's error to a reply: a dependency that is
// down (outage.Classify) is 503 SERVICE_UNAVAILABLE, not 500.
func errorResponse(err error) *Response {
	e := apierr.From(outage.Classify(err))
	return &Response{StatusCode: e.HTTPStatus(), Error: e}
}

func (s *Server) reply(ctx context.Context, d amqp.Delivery, resp *Response) {
	if d.ReplyTo == "" {
		return
	}
	b, err := resp.MarshalJSON()
	if err != nil {
		b, _ = json.Marshal(errorResponse(err))
	}
	// Reply on the channel the request came in on when possible: no pool round trip.
	if ch, ok := d.Acknowledger.(*amqp091.Channel); ok {
		err = ch.Publish("", d.ReplyTo, false, false, amqp.Publishing{ContentType: "application/json", CorrelationId: d.CorrelationId, Body: b})
		if err == nil {
			return
		}
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err = s.conn.Publish(pctx, "", d.ReplyTo, amqp.Publishing{
		ContentType: "application/json", CorrelationId: d.CorrelationId, Body: b, Timestamp: time.Now(),
	}, amqp.PublishOptions{NoConfirm: true})
	if err != nil {
		s.log.WarnContext(ctx, "rpc reply not sent", "error", err)
	}
}
