package sip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"

	"voipbin/pkg/apierr"
	"voipbin/pkg/netpolicy"
	"voipbin/pkg/rtcapi"
)

// AddressPolicy is where sip destinations (not the trunk) may be dialled: the pkg/netpolicy
// rules (loopback, private, link-local, … refused unless Allowed), and never the trunk's
// host:port nor this node's own listeners, whatever Allowed says — the trunk is reached as tel,
// at the tel price, only.
type AddressPolicy struct {
	Allowed []netip.Prefix
	// TrunkURI is RTC_TEL_TRUNK_URI; its host:port is refused as a sip destination.
	TrunkURI string
	// Resolver resolves destination and trunk names (nil: net.DefaultResolver).
	Resolver netpolicy.Resolver
}

// hostPort is a host (a name or an address) and port, resolved at each dial.
type hostPort struct {
	host string
	port uint16
}

// destinationGuard applies an AddressPolicy.
type destinationGuard struct {
	policy   *netpolicy.Policy
	resolver netpolicy.Resolver
	denied   []hostPort // the trunk and our own external address, which may be names
}

// newDestinationGuard builds the guard of a UA bound at bound and reached at external.
func newDestinationGuard(p AddressPolicy, bound *net.UDPAddr, external hostPort) (*destinationGuard, error) {
	resolver := p.Resolver
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	var own []netip.AddrPort
	port := uint16(bound.Port)
	if ip, ok := netip.AddrFromSlice(bound.IP); ok && !ip.Unmap().IsUnspecified() {
		own = append(own, netip.AddrPortFrom(ip.Unmap(), port))
	} else {
		// A wildcard listener is reached at every local address.
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("list local addresses: %w", err)
		}
		for _, a := range addrs {
			if pre, err := netip.ParsePrefix(a.String()); err == nil {
				own = append(own, netip.AddrPortFrom(pre.Addr().Unmap(), port))
			}
		}
	}
	g := &destinationGuard{resolver: resolver, denied: []hostPort{external}}
	if p.TrunkURI != "" {
		var u sip.Uri
		if err := sip.ParseUri(strings.ReplaceAll(p.TrunkURI, "{number}", "0"), &u); err != nil || u.Host == "" {
			return nil, fmt.Errorf("trunk URI %q: %v", p.TrunkURI, err)
		}
		g.denied = append(g.denied, hostPort{host: u.Host, port: defaultPort(u.Port)})
	}
	g.policy = netpolicy.New(netpolicy.Options{Allowed: p.Allowed, Denied: own, Resolver: resolver})
	return g, nil
}

func defaultPort(p int) uint16 {
	if p <= 0 || p > 65535 {
		return 5060
	}
	return uint16(p)
}

// check resolves the destination of a sip dialog and returns the address to send it to: every
// address the host resolves to must pass the policy and be none of the denied ones.
func (g *destinationGuard) check(ctx context.Context, host string, port int) (netip.AddrPort, error) {
	aps, err := g.policy.Resolve(ctx, host, defaultPort(port))
	switch {
	case errors.Is(err, netpolicy.ErrForbidden):
		return netip.AddrPort{}, apierr.Invalid("destination.target", "is not an allowed SIP destination: "+err.Error())
	case err != nil:
		return netip.AddrPort{}, apierr.Newf(apierr.Unavailable, rtcapi.ErrReasonDialFailed, "resolving the destination: %v", err)
	}
	for _, d := range g.denied {
		// A name of ours that does not resolve now cannot be where the destination leads.
		dAddrs, _ := netpolicy.New(netpolicy.Options{Allowed: allOpen, Resolver: g.resolver}).Resolve(ctx, d.host, d.port)
		for _, da := range dAddrs {
			for _, ap := range aps {
				if ap == da {
					return netip.AddrPort{}, apierr.Invalid("destination.target",
						"is not an allowed SIP destination: "+ap.String()+" is the platform's trunk or one of its own SIP addresses ("+net.JoinHostPort(d.host, strconv.Itoa(int(d.port)))+"); tel numbers go through the trunk")
				}
			}
		}
	}
	// Like sipgo's own lookup, an IPv4 address is preferred.
	for _, ap := range aps {
		if ap.Addr().Is4() {
			return ap, nil
		}
	}
	return aps[0], nil
}

// allOpen allows every address: the denied names are resolved without judging them.
var allOpen = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
