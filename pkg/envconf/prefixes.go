package envconf

import "net/netip"

// Prefixes reads a comma-separated list of CIDRs or single addresses (a single address is its
// own /32 or /128).
func (r *Reader) Prefixes(name, def string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range r.List(name, def) {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		} else {
			r.Fail(name, "%q is not a CIDR like 127.0.0.0/8 or an address", s)
		}
	}
	return out
}
