package ws

import (
	"context"
	"time"

	"github.com/gorilla/websocket"

	"voipbin/pkg/apierr"
)

// A socket lives only as long as the credential it was opened with: it is closed when the
// credential expires (a timer at Identity.Expires) and when Identity.Check says it was revoked.
// The close codes are in the private range 4000-4999 and mirror HTTP's 401 and 403.
const (
	// CloseCredentialsExpired closes a socket whose JWT or access key expired.
	CloseCredentialsExpired = 4001
	// CloseCredentialsRevoked closes a socket whose access key was deleted, whose user was
	// deleted, or whose user's permission was lowered below the credential's.
	CloseCredentialsRevoked = 4003
)

// Close reasons of the credential checks (the text before the colon of the close reason).
const (
	ReasonCredentialsExpired = "CREDENTIALS_EXPIRED"
	ReasonCredentialsRevoked = "CREDENTIALS_REVOKED"
)

// Disconnect causes of the credential checks (ws_disconnections_total).
const (
	causeExpired      = "credentials_expired"
	causeRevoked      = "credentials_revoked"
	causeUnverifiable = "credentials_unverifiable"
)

// Revalidate asks for every open socket's credential to be checked again now (without waiting
// for the next RevalidateInterval); main calls it when a revocation is announced. It never
// blocks: requests made while a check is pending are folded into it.
func (h *Handler) Revalidate() {
	select {
	case h.revalidate <- struct{}{}:
	default:
	}
}

// revalidateLoop re-checks every socket's credential each RevalidateInterval and on Revalidate,
// until ctx ends.
func (h *Handler) revalidateLoop(ctx context.Context) {
	t := time.NewTicker(h.opts.RevalidateInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.revalidate:
		}
		h.mu.Lock()
		conns := make([]*conn, 0, len(h.conns))
		for c := range h.conns {
			conns = append(conns, c)
		}
		h.mu.Unlock()
		for _, c := range conns {
			if ctx.Err() != nil {
				return
			}
			c.recheck(ctx)
		}
	}
}

// recheck asks Identity.Check whether the connection's credential still stands. A refusal closes
// the socket with 4003; a check that cannot be answered (the stores are down) keeps it open for up
// to RevalidateGrace since the last good answer, then closes it with 1013 so the client
// reconnects (and is authenticated afresh) once the platform can tell again: an unknown answer is
// never taken as valid for long.
func (c *conn) recheck(ctx context.Context) {
	if c.ident.Check == nil || c.isClosing() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, c.h.opts.BindTimeout)
	err := c.ident.Check(cctx)
	cancel()
	now := time.Now()
	if err == nil {
		c.mu.Lock()
		c.verified = now
		c.mu.Unlock()
		return
	}
	e := apierr.From(err)
	if e.Status == apierr.Unavailable || e.Status == apierr.Internal {
		c.mu.Lock()
		stale := now.Sub(c.verified) > c.h.opts.RevalidateGrace
		c.mu.Unlock()
		if stale {
			c.h.log.WarnContext(c.ctx, "websocket closed: its credential could not be checked", "error", err)
			c.closeWith(websocket.CloseTryAgainLater, closeText(ReasonServiceUnavailable, "the credential could not be checked; reconnect"), causeUnverifiable)
		}
		return
	}
	c.h.log.InfoContext(c.ctx, "websocket closed: credential revoked", "message", e.Message)
	c.closeWith(CloseCredentialsRevoked, closeText(ReasonCredentialsRevoked, e.Message), causeRevoked)
}

// watchExpiry closes the connection when its credential expires; the returned function stops the
// timer.
func (c *conn) watchExpiry() (stop func()) {
	exp := c.ident.Expires
	if exp.IsZero() {
		return func() {}
	}
	t := time.AfterFunc(time.Until(exp), func() {
		c.closeWith(CloseCredentialsExpired, closeText(ReasonCredentialsExpired, "the credential expired at "+exp.UTC().Format(time.RFC3339)), causeExpired)
	})
	return func() { t.Stop() }
}
