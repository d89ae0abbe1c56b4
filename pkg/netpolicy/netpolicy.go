// Package netpolicy is the outbound address policy the platform applies to addresses a customer
// chooses (SIP destinations, webhook targets): loopback, private, link-local, unique-local, CGNAT, multicast,
// unspecified, reserved and cloud-metadata ranges, and every IPv6 form that embeds an IPv4 address
// (mapped, compatible, NAT64, 6to4, Teredo, SIIT, ISATAP), are refused unless the operator allowed them;
// some addresses (the platform's own services, a trunk) are refused even then. A host name is
// resolved and every address it resolves to must pass, and the caller connects to the checked
// address, never to the name again.
package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ErrForbidden is wrapped by every refusal of an address.
var ErrForbidden = errors.New("address forbidden")

// ErrUnresolvable is wrapped when a host name does not resolve.
var ErrUnresolvable = errors.New("host does not resolve")

// Resolver looks host names up (net.DefaultResolver in production).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Options configure a Policy.
type Options struct {
	// Allowed opens ranges that are refused by default (e.g. 127.0.0.0/8 for a local stack).
	Allowed []netip.Prefix
	// Denied are addresses with a port that are refused even inside Allowed (the trunk, the
	// platform's own listeners).
	Denied []netip.AddrPort
	// Resolver resolves host names; nil means net.DefaultResolver.
	Resolver Resolver
}

// Policy decides which addresses may be reached.
type Policy struct {
	allowed  []netip.Prefix
	denied   map[netip.AddrPort]bool
	resolver Resolver
}

// New makes a policy.
func New(o Options) *Policy {
	p := &Policy{allowed: o.Allowed, denied: map[netip.AddrPort]bool{}, resolver: o.Resolver}
	if p.resolver == nil {
		p.resolver = net.DefaultResolver
	}
	for _, ap := range o.Denied {
		p.denied[canonical(ap)] = true
	}
	return p
}

func canonical(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// reserved are the ranges refused by default beyond what netip's predicates (loopback, private,
// link-local, multicast, unspecified) already cover.
var reserved = mustPrefixes(
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

// embedsV4 are the IPv6 ranges whose addresses carry an IPv4 address: one could reach a refused
// IPv4 host through them, so they are refused as a whole (IPv4-mapped addresses are unmapped and
// checked as the IPv4 address they are).
var embedsV4 = mustPrefixes(
	"::/96",           // IPv4-compatible (deprecated), e.g. ::a9fe:a9fe
	"::ffff:0:0:0/96", // SIIT IPv4-translated
	"64:ff9b::/96",    // NAT64 well-known prefix
	"64:ff9b:1::/48",  // NAT64 local-use
	"2002::/16",       // 6to4
	"2001::/32",       // Teredo (the client's IPv4 address, obfuscated)
)

// isatap reports whether ip has an ISATAP interface identifier (RFC 5214: 0000:5efe or 0200:5efe
// followed by an IPv4 address), whatever its /64 prefix.
func isatap(ip netip.Addr) bool {
	b := ip.As16()
	return (b[8] == 0x00 || b[8] == 0x02) && b[9] == 0x00 && b[10] == 0x5e && b[11] == 0xfe
}

// Check returns nil if ip may be reached, else an error wrapping ErrForbidden that says why.
func (p *Policy) Check(ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	for _, pre := range p.allowed {
		if pre.Contains(ip) {
			return nil
		}
	}
	if reason := forbiddenReason(ip); reason != "" {
		return fmt.Errorf("%w: %s is %s", ErrForbidden, ip, reason)
	}
	return nil
}

// CheckAddrPort is Check, and refuses the denied addresses with their port whatever is allowed.
func (p *Policy) CheckAddrPort(ap netip.AddrPort) error {
	if p.denied[canonical(ap)] {
		return fmt.Errorf("%w: %s is one of the platform's own SIP addresses or its trunk", ErrForbidden, ap)
	}
	return p.Check(ap.Addr())
}

func forbiddenReason(ip netip.Addr) string {
	switch {
	case !ip.IsValid():
		return "not an address"
	case ip.IsUnspecified():
		return "the unspecified address"
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
	}
	if ip.Is6() {
		for _, pre := range embedsV4 {
			if pre.Contains(ip) {
				return "an IPv6 address embedding an IPv4 address (" + pre.String() + ")"
			}
		}
		if isatap(ip) {
			return "an ISATAP address embedding an IPv4 address"
		}
	}
	for _, pre := range reserved {
		if pre.Contains(ip) {
			return "in the reserved range " + pre.String()
		}
	}
	return ""
}

// ParseHost is host as an IP address if it is one: dotted IPv4, or IPv6 with or without
// brackets.
func ParseHost(host string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return ip, err == nil
}

// Resolve resolves host (a name or an IP address) and checks every address with port: it returns
// them all when all pass, else an error wrapping ErrForbidden (one fails) or ErrUnresolvable.
func (p *Policy) Resolve(ctx context.Context, host string, port uint16) ([]netip.AddrPort, error) {
	var addrs []netip.Addr
	if ip, ok := ParseHost(host); ok {
		addrs = []netip.Addr{ip}
	} else {
		var err error
		addrs, err = p.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil || len(addrs) == 0 {
			return nil, fmt.Errorf("%w: %q: %v", ErrUnresolvable, host, err)
		}
	}
	out := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a.Unmap().WithZone(""), port)
		if err := p.CheckAddrPort(ap); err != nil {
			if host != a.String() {
				err = fmt.Errorf("%w (%s resolves to it)", err, host)
			}
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}
