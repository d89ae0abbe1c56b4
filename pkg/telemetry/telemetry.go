// Package telemetry owns what every voipbin process shows an operator: JSON logs that carry the
// request, customer and call ids found in the context, a Prometheus registry handed to whoever
// needs one (never a global), and the admin HTTP server with /healthz, /readyz and /metrics.
package telemetry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"regexp"
	"strings"
)

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyCustomerID
	keyCallID
)

// WithRequestID returns ctx carrying the request id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, keyRequestID, id)
}

// RequestID is the request id in ctx, or "".
func RequestID(ctx context.Context) string { s, _ := ctx.Value(keyRequestID).(string); return s }

// WithCustomerID returns ctx carrying the customer id of the caller or resource.
func WithCustomerID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, keyCustomerID, id)
}

// CustomerID is the customer id in ctx, or "".
func CustomerID(ctx context.Context) string { s, _ := ctx.Value(keyCustomerID).(string); return s }

// WithCallID returns ctx carrying a call id, so every log line about the call names it.
func WithCallID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, keyCallID, id)
}

// CallID is the call id in ctx, or "".
func CallID(ctx context.Context) string { s, _ := ctx.Value(keyCallID).(string); return s }

var validRequestID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidRequestID reports whether an inbound request id may be echoed: 1–64 of [A-Za-z0-9_-].
func ValidRequestID(id string) bool { return validRequestID.MatchString(id) }

// NewRequestID makes a random 32-hex-digit request id.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NewLogger makes a JSON logger for a service. Every line carries "service" and, when present in
// the context passed to the *Context logging methods, request_id, customer_id and call_id.
func NewLogger(w io.Writer, service string, level slog.Leveler) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(contextHandler{h}).With("service", service)
}

// ParseLevel turns "debug", "info", "warn" or "error" into a level; anything else is info.
func ParseLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

type contextHandler struct{ slog.Handler }

func (h contextHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	if id := CustomerID(ctx); id != "" {
		r.AddAttrs(slog.String("customer_id", id))
	}
	if id := CallID(ctx); id != "" {
		r.AddAttrs(slog.String("call_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h contextHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return contextHandler{h.Handler.WithAttrs(as)}
}

func (h contextHandler) WithGroup(name string) slog.Handler {
	return contextHandler{h.Handler.WithGroup(name)}
}
