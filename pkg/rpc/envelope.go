// Package rpc is request/response over RabbitMQ (DESIGN §3). A Client publishes a JSON request
// envelope to a service's durable request queue with direct reply-to and a correlation id, carries
// the caller's deadline as the AMQP expiration and in the envelope, and fails fast through a circuit
// breaker per target queue. A Server consumes the queue, routes "METHOD /path/{param}" patterns,
// never runs a request whose deadline has passed, derives its handler ctx from that deadline,
// replies with a typed error on failure and acks only after replying.
package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"voipbin/pkg/apierr"
)

// Header names carried in the envelope and as AMQP headers.
const (
	HeaderRequestID  = "request_id"
	HeaderCustomerID = "customer_id"
)

// Request is the request envelope.
type Request struct {
	MessageID string            `json:"message_id"`
	Timestamp time.Time         `json:"timestamp"`
	Deadline  time.Time         `json:"deadline,omitzero"`
	Route     string            `json:"route"`
	Method    string            `json:"method"`
	Headers   map[string]string `json:"headers,omitempty"`
	Body      json.RawMessage   `json:"body,omitempty"`

	params map[string]string
	query  url.Values
}

// Param is a path parameter captured by the route pattern ("{id}").
func (r *Request) Param(name string) string { return r.params[name] }

// Query is the parsed query string of the route.
func (r *Request) Query() url.Values { return r.query }

// Decode unmarshals the body into v, rejecting unknown fields and trailing data with
// INVALID_ARGUMENT/INVALID_JSON_BODY.
func (r *Request) Decode(v any) error {
	if len(r.Body) == 0 {
		return apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "request body is empty")
	}
	return DecodeStrict(r.Body, v)
}

// DecodeStrict unmarshals data into v, rejecting unknown fields and trailing data.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "invalid JSON body: "+err.Error())
	}
	if dec.More() {
		return apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "invalid JSON body: trailing data after the JSON value")
	}
	return nil
}

// Response is the response envelope. Error is set when StatusCode is not 2xx.
type Response struct {
	MessageID  string          `json:"message_id"`
	Timestamp  time.Time       `json:"timestamp"`
	StatusCode int             `json:"status_code"`
	Body       json.RawMessage `json:"body,omitempty"`
	Error      *apierr.Error   `json:"error,omitempty"`
}

// JSON makes a response with status code and v marshalled as the body.
func JSON(status int, v any) (*Response, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal response: %w", err)
	}
	return &Response{StatusCode: status, Body: b}, nil
}

// Caller is what a typed contract client needs from Client.
type Caller interface {
	Call(ctx context.Context, queue string, req Request) (*Response, error)
}

// Do sends a request with in as its body to queue and decodes a 2xx body into out (if non-nil).
// An error reply comes back as its *apierr.Error.
func Do(ctx context.Context, c Caller, queue, method, route string, in, out any) error {
	req := Request{Method: method, Route: route}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("marshal request: %w", err)
		}
		req.Body = b
	}
	resp, err := c.Call(ctx, queue, req)
	if err != nil {
		return err
	}
	if out != nil && len(resp.Body) > 0 {
		if err := json.Unmarshal(resp.Body, out); err != nil {
			return fmt.Errorf("decode %s %s reply: %w", method, route, err)
		}
	}
	return nil
}
