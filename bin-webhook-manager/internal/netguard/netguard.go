// Package netguard is the webhook manager's SSRF guard: it refuses webhook targets in private,
// loopback, link-local, unique-local, CGNAT, multicast, reserved and cloud-metadata ranges, and
// every IPv6 form that embeds an IPv4 address (compatible, mapped, SIIT, NAT64, 6to4, Teredo,
// ISATAP), unless the operator allowed them (WEBHOOK_ALLOWED_NETWORKS). It checks twice: when a webhook is
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
	"syscall"

	"voipbin/bin-webhook-manager/internal/webhook"
)

// Resolver looks host names up (net.DefaultResolver in production).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Guard decides which addresses webhooks may reach.
type Guard struct {
	allowed  []netip.Prefix
	resolver Resolver
}

// New makes a guard that allows the forbidden ranges only where they fall inside allowed.
func New(allowed []netip.Prefix, resolver Resolver) *Guard {
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	return &Guard{allowed: allowed, resolver: resolver}
}

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// forbidden are the ranges a webhook may not reach by default, beyond what netip's predicates
// (loopback, private, link-local, multicast, unspecified) already cover.
var forbidden = mustPrefixes(
	"0.0.0.0/8",          // "this network"
	"100.64.0.0/10",      // CGNAT (RFC 6598)
	"192.0.0.0/24",       // IETF protocol assignments
	"192.0.2.0/24",       // TEST-NET-1
	"198.18.0.0/15",      // benchmarking
	"198.51.100.0/24",    // TEST-NET-2
	"203.0.113.0/24",     // TEST-NET-3
	"240.0.0.0/4",        // reserved, and 255.255.255.255
	"169.254.169.254/32", // cloud metadata (also link-local)
	"fd00:ec2::254/128",  // AWS metadata over IPv6 (also unique-local)
	"100::/64",           // discard-only
	"2001:db8::/32",      // documentation
)

// embedsV4 are the IPv6 ranges whose addresses carry an IPv4 address: through them one could reach
// a refused IPv4 host (a NAT64 gateway, a 6to4 relay, a stack that still routes IPv4-compatible
// addresses), so they are refused as a whole, whatever the IPv4 address inside. IPv4-mapped
// addresses (::ffff:a.b.c.d) are unmapped first and checked as the IPv4 address they are.
var embedsV4 = mustPrefixes(
	"::/96",           // IPv4-compatible (deprecated), e.g. ::a9fe:a9fe = ::169.254.169.254
	"::ffff:0:0:0/96", // SIIT IPv4-translated, ::ffff:0:a.b.c.d
	"64:ff9b::/96",    // NAT64 well-known prefix
	"64:ff9b:1::/48",  // NAT64 local-use
	"2002::/16",       // 6to4
	"2001::/32",       // Teredo (the client's IPv4 address, obfuscated)
)

// Check returns nil if ip may be reached, else an error wrapping webhook.ErrTargetForbidden.
func (g *Guard) Check(ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	for _, p := range g.allowed {
		if p.Contains(ip) {
			return nil
		}
	}
	if reason := forbiddenReason(ip); reason != "" {
		return fmt.Errorf("%w: %s is %s", webhook.ErrTargetForbidden, ip, reason)
	}
	return nil
}

// isatap reports whether ip has an ISATAP interface identifier (RFC 5214: 0000:5efe or 0200:5efe
// followed by an IPv4 address), whatever its /64 prefix.
func isatap(ip netip.Addr) bool {
	b := ip.As16()
	return (b[8] == 0x00 || b[8] == 0x02) && b[9] == 0x00 && b[10] == 0x5e && b[11] == 0xfe
}

func forbiddenReason(ip netip.Addr) string {
	switch {
	case !ip.IsValid():
		return "not an address"
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsPrivate():
		return "a private address"
	case ip == netip.MustParseAddr("169.254.169.254"), ip == netip.MustParseAddr("fd00:ec2::254"):
		return "a cloud metadata address"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "a link-local address"
	case ip.IsMulticast():
		return "a multicast address"
	case ip.IsUnspecified():
		return "the unspecified address"
	}
	if ip.Is6() {
		for _, p := range embedsV4 {
			if p.Contains(ip) {
				return "an IPv6 address embedding an IPv4 address (" + p.String() + ")"
			}
		}
		if isatap(ip) {
			return "an ISATAP address embedding an IPv4 address"
		}
	}
	for _, p := range forbidden {
		if p.Contains(ip) {
			return "in the reserved range " + p.String()
		}
	}
	return ""
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
