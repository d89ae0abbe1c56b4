// Package config loads the rtc manager's configuration from the environment.
package config

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"voipbin/pkg/envconf"
)

// Config is everything the rtc manager reads from its environment.
type Config struct {
	RabbitMQAddress string
	RedisAddress    string
	AdminAddress    string
	LogLevel        string

	// NodeID names this instance; its own RPC queue is rtcapi.NodeQueue(NodeID).
	NodeID string
	SIP    SIP
}

// SIP is the user agent's configuration.
type SIP struct {
	// ListenAddress is where the user agent listens, UDP and TCP.
	ListenAddress string
	// ExternalAddress is the host:port put in Contact and Via (default: ListenAddress).
	ExternalAddress string
	// TelTrunkURI is the SIP URI tel destinations go to, with {number} replaced by the number.
	TelTrunkURI string
	// TrunkUsername and TrunkPassword answer the trunk's digest challenges when set.
	TrunkUsername string
	TrunkPassword string
	// DialTimeout ends an unanswered dial (CANCEL, reason noanswer); MaxDuration an answered call
	// (BYE, reason timeout). Both are defaults a dial request may override.
	DialTimeout time.Duration
	MaxDuration time.Duration
	// RTPPortMin and RTPPortMax bound the local RTP ports offered in SDP.
	RTPPortMin int
	RTPPortMax int
	// AllowedNetworks opens, for sip destinations, ranges refused by default (loopback, private,
	// link-local, …; RTC_SIP_ALLOWED_NETWORKS). The trunk and the node's own listeners stay
	// refused whatever it says.
	AllowedNetworks []netip.Prefix
	// TCPIdleTimeout closes an inbound SIP TCP connection that sent nothing for so long;
	// TCPMaxConnections caps the inbound SIP TCP connections open at once (0: no cap).
	TCPIdleTimeout    time.Duration
	TCPMaxConnections int
}

// Load reads and validates the configuration, reporting every problem in one error.
func Load(getenv func(string) string) (Config, error) {
	r := envconf.New(getenv)
	c := load(r)
	return c, r.Err()
}

// Vars lists every variable Load reads, with its default and whether it is required
// (`<binary> vars`; deploy/check compares deployments against it).
func Vars() []envconf.Var {
	r := envconf.New(func(string) string { return "" })
	load(r)
	return r.Vars()
}

// load reads the configuration through r, recording problems in it.
func load(r *envconf.Reader) Config {
	host, _ := os.Hostname()
	c := Config{
		RabbitMQAddress: r.URL("RABBITMQ_ADDRESS", "", true, "amqp", "amqps"),
		RedisAddress:    r.HostPort("REDIS_ADDRESS", "", true),
		AdminAddress:    r.HostPort("ADMIN_ADDRESS", "127.0.0.1:9103", false),
		LogLevel:        r.String("LOG_LEVEL", "info", false),
		NodeID:          r.String("NODE_ID", host, true),
		SIP: SIP{
			ListenAddress:     r.HostPort("SIP_LISTEN_ADDRESS", "127.0.0.1:5060", false),
			ExternalAddress:   r.HostPort("SIP_EXTERNAL_ADDRESS", "", false),
			TelTrunkURI:       r.String("RTC_TEL_TRUNK_URI", "sip:{number}@127.0.0.1:5080", false),
			TrunkUsername:     r.String("RTC_TRUNK_USERNAME", "", false),
			TrunkPassword:     r.String("RTC_TRUNK_PASSWORD", "", false),
			DialTimeout:       r.Duration("RTC_DIAL_TIMEOUT", 60*time.Second),
			MaxDuration:       r.Duration("RTC_MAX_DURATION", time.Hour),
			RTPPortMin:        r.Int("RTC_RTP_PORT_MIN", 20000, 1024, 65535),
			RTPPortMax:        r.Int("RTC_RTP_PORT_MAX", 30000, 1024, 65535),
			AllowedNetworks:   r.Prefixes("RTC_SIP_ALLOWED_NETWORKS", ""),
			TCPIdleTimeout:    r.Duration("SIP_TCP_IDLE_TIMEOUT", 2*time.Minute),
			TCPMaxConnections: r.Int("SIP_TCP_MAX_CONNECTIONS", 1024, 0, 1_000_000),
		},
	}
	if c.NodeID != "" && !validNodeID(c.NodeID) {
		r.Fail("NODE_ID", "%q may hold only letters, digits, '-', '_' and '.' (1-64)", c.NodeID)
	}
	external := c.SIP.ExternalAddress
	if external == "" {
		// Contact and Via then carry the bound listen address (port 0: the port the system chose).
		external = c.SIP.ListenAddress
	}
	if host, port, err := net.SplitHostPort(external); err == nil {
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 || (p == 0 && c.SIP.ExternalAddress != "") ||
			host == "" || host == "0.0.0.0" || host == "::" {
			r.Fail("SIP_EXTERNAL_ADDRESS", "%q must be a reachable host with a port (set it when SIP_LISTEN_ADDRESS is a wildcard or port 0)", c.SIP.ExternalAddress)
		}
	}
	if !strings.HasPrefix(c.SIP.TelTrunkURI, "sip:") || !strings.Contains(c.SIP.TelTrunkURI, "{number}") {
		r.Fail("RTC_TEL_TRUNK_URI", "%q must be a sip: URI containing {number}, like sip:{number}@127.0.0.1:5080", c.SIP.TelTrunkURI)
	}
	if (c.SIP.TrunkUsername == "") != (c.SIP.TrunkPassword == "") {
		r.Fail("RTC_TRUNK_USERNAME", "RTC_TRUNK_USERNAME and RTC_TRUNK_PASSWORD must be set together")
	}
	if c.SIP.RTPPortMin > c.SIP.RTPPortMax {
		r.Fail("RTC_RTP_PORT_MIN", "%d is above RTC_RTP_PORT_MAX %d", c.SIP.RTPPortMin, c.SIP.RTPPortMax)
	}
	return c
}

func validNodeID(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
