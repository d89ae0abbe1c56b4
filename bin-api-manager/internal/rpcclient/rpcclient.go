// Package rpcclient is the api manager's side of RPC: it wraps the pkg/rpc client so that every
// request to a manager leaves a log line when it is sent and when its reply (or failure) comes
// back, carrying the request, customer and call ids of the ctx, and feeds a latency histogram.
// An operator can so follow one HTTP request into the call manager and back.
package rpcclient

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/apierr"
	"voipbin/pkg/rpc"
)

// Logged is an rpc.Caller that logs and measures every call of the Caller it wraps.
type Logged struct {
	next    rpc.Caller
	log     *slog.Logger
	latency *prometheus.HistogramVec
}

// New wraps next; reg (may be nil) receives api_rpc_client_seconds.
func New(next rpc.Caller, log *slog.Logger, reg prometheus.Registerer) *Logged {
	l := &Logged{next: next, log: log, latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "api_rpc_client_seconds", Help: "RPC round trips from the API gateway, by target queue, method and outcome.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"queue", "method", "code"})}
	if reg != nil {
		reg.MustRegister(l.latency)
	}
	return l
}

// Call sends req and logs both ends. Reads log at debug level, changes at info. A reply saying
// the route does not exist becomes INTERNAL.
func (l *Logged) Call(ctx context.Context, queue string, req rpc.Request) (*rpc.Response, error) {
	level := slog.LevelInfo
	if req.Method == "GET" {
		level = slog.LevelDebug
	}
	l.log.Log(ctx, level, "rpc request sent", "queue", queue, "method", req.Method, "route", req.Route)
	start := time.Now()
	resp, err := l.next.Call(ctx, queue, req)
	took := time.Since(start)
	code := 0
	if resp != nil {
		code = resp.StatusCode
	}
	if e, ok := apierr.As(err); ok && (e.Reason == apierr.ReasonRouteNotFound || e.Reason == apierr.ReasonMethodNotAllowed) {
		// The manager does not know the route (a version mismatch): a fault of ours, not a
		// missing resource, so it must not reach the public as a 404 or 405.
		l.log.ErrorContext(ctx, "rpc route not served by the manager", "queue", queue, "method", req.Method,
			"route", req.Route, "reason", e.Reason, "message", e.Message)
		err = apierr.New(apierr.Internal, apierr.ReasonInternal, "internal error")
	}
	if err != nil {
		e := apierr.From(err)
		if code == 0 {
			code = e.HTTPStatus()
		}
		if code >= 500 {
			level = slog.LevelWarn
		}
		l.log.Log(ctx, level, "rpc reply", "queue", queue, "method", req.Method, "route", req.Route,
			"status_code", code, "reason", e.Reason, "duration_ms", took.Seconds()*1000)
	} else {
		l.log.Log(ctx, level, "rpc reply", "queue", queue, "method", req.Method, "route", req.Route,
			"status_code", code, "duration_ms", took.Seconds()*1000)
	}
	l.latency.WithLabelValues(queue, req.Method, strconv.Itoa(code)).Observe(took.Seconds())
	return resp, err
}
