// Package netguard is the webhook manager's SSRF guard: it refuses webhook targets in private,
// loopback, link-local, unique-local, CGNAT, multicast, reserved and cloud-metadata ranges, and
// every IPv6 form that embeds an IPv4 address (compatible, mapped, SIIT, NAT64, 6to4, Teredo,
// ISATAP), unless the operator allowed them (WEBHOOK_ALLOWED_NETWORKS); the ranges are
// pkg/netpolicy's, shared with the SIP destination policy. It checks twice: when a webhook is
// written (the URI's host is resolved and every address checked) and again on every connection
// (a net.Dialer Control function sees the address actually dialled, which defeats DNS rebinding
// and redirects to a private address).
package netguard

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"

	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/pkg/netpolicy"
)

// Resolver looks host names up (net.DefaultResolver in production).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Guard decides which addresses webhooks may reach. The ranges themselves are pkg/netpolicy's,
// the one address policy of the platform (SIP destinations use it too).
type Guard struct {
	policy   *netpolicy.Policy
	resolver Resolver
}

// New makes a guard that allows the forbidden ranges only where they fall inside allowed.
func New(allowed []netip.Prefix, resolver Resolver) *Guard {
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	return &Guard{policy: netpolicy.New(netpolicy.Options{Allowed: allowed, Resolver: resolver}), resolver: resolver}
}

// Check returns nil if ip may be reached, else an error wrapping webhook.ErrTargetForbidden.
func (g *Guard) Check(ip netip.Addr) error {
	if err := g.policy.Check(ip); err != nil {
		return fmt.Errorf("%w: %s", webhook.ErrTargetForbidden, strings.TrimPrefix(err.Error(), netpolicy.ErrForbidden.Error()+": "))
	}
	return nil
}

// CheckTarget resolves the host of uri and checks every address it resolves to. A host that does
// not resolve is a *webhook.FieldError.
func (g *Guard) CheckTarget(ctx context.Context, uri string) error {
	u, err := url.Parse(uri)
	if err != nil {
		return &webhook.FieldError{Field: "uri", Description: "is not a valid URL"}
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil {
		return g.Check(ip)
	}
	addrs, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return &webhook.FieldError{Field: "uri", Description: fmt.Sprintf("host %q does not resolve", host)}
	}
	for _, a := range addrs {
		if err := g.Check(a); err != nil {
			return err
		}
	}
	return nil
}

// Control is a net.Dialer Control function: it refuses a connection to a forbidden address just
// before it is made, whatever name led there.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot check dial address %q", webhook.ErrTargetForbidden, address)
	}
	return g.Check(ap.Addr())
}
