// Package sender sends webhook deliveries over HTTP: one request per attempt, no proxy, no
// redirects followed, every connection checked by the SSRF guard as it is dialled, and the first
// KiB of the answer kept for the delivery log.
package sender

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"voipbin/bin-webhook-manager/internal/webhook"
)

// UserAgent identifies deliveries to receivers.
const UserAgent = "VoIPBIN-Webhooks/1.0"

// Sender is an HTTP client for deliveries.
type Sender struct{ client *http.Client }

// New makes a sender whose every dial passes through control (the guard's Control).
func New(control func(network, address string, c syscall.RawConn) error) *Sender {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: control}
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would hide the real target from the guard
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &Sender{client: &http.Client{
		Transport: tr,
		// A redirect is the receiver's answer, recorded as it is: following it would send a signed
		// body to a target nobody validated.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Send makes one attempt within ctx's deadline.
func (s *Sender) Send(ctx context.Context, r webhook.Request) webhook.Result {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, r.Method, r.URI, bytes.NewReader(r.Body))
	if err != nil {
		return webhook.Result{Err: err, Latency: time.Since(start)}
	}
	for k, v := range r.Header {
		req.Header.Set(k, v)
	}
	req.Header.Set("User-Agent", UserAgent)
	resp, err := s.client.Do(req)
	latency := time.Since(start)
	if err != nil {
		return webhook.Result{Err: err, Latency: latency}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, webhook.MaxResponseBytes))
	// Drain a little more so the connection can be reused; give up on large answers.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return webhook.Result{StatusCode: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"), Body: body, Latency: latency}
}
