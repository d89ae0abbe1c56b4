// Package carrier is the SIP carrier simulator of the local stack: a sipgo user agent that
// answers every INVITE the way the dialled number's digits say (the number plan below), so a
// new user can place a real SIP call with nothing else installed, and tests have a second,
// independent SIP stack to call.
//
// Number plan, on the user part of the Request-URI (a leading + is ignored; tel numbers need
// 7 to 15 digits, so pad with zeros):
//
//	1200NNN…  rings 1 s, answers, hangs up (BYE) after NNN… seconds; all zeros: never hangs up
//	1180…     rings forever (180 Ringing until the caller cancels)
//	1486…     rings 0.2 s, then 486 Busy Here
//	1CCC…     rings 0.2 s, then rejects with SIP status CCC when 400 ≤ CCC ≤ 699 (1403 Forbidden,
//	          1404 Not Found, 1503 Service Unavailable, 1603 Decline, …)
//	other     404 Not Found at once (so is 1404…)
package carrier

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	rtcsip "voipbin/bin-rtc-manager/internal/sip"
)

// Kind of behaviour.
type Kind int

// The behaviours.
const (
	Reject Kind = iota
	Answer
	RingForever
)

// Behaviour is what the simulator does with a call.
type Behaviour struct {
	Kind Kind
	// Code is the final status of a rejected call.
	Code int
	// RingFor is how long an answered call rings first.
	RingFor time.Duration
	// HangupAfter is how long an answered call lasts before the simulator's BYE; 0 is forever.
	HangupAfter time.Duration
}

// Plan maps a dialled user part to its behaviour.
func Plan(user string) Behaviour {
	digits := strings.TrimPrefix(user, "+")
	if len(digits) < 4 || strings.Trim(digits, "0123456789") != "" {
		return Behaviour{Kind: Reject, Code: 404}
	}
	code, _ := strconv.Atoi(digits[1:4])
	switch {
	case digits[0] != '1':
		return Behaviour{Kind: Reject, Code: 404}
	case code == 200:
		n, err := strconv.ParseInt(digits[4:], 10, 64)
		if err != nil || len(digits) == 4 {
			n = 0
		}
		n = min(n, 24*3600) // a day at most; also keeps the duration from overflowing
		return Behaviour{Kind: Answer, RingFor: time.Second, HangupAfter: time.Duration(n) * time.Second}
	case code == 180:
		return Behaviour{Kind: RingForever}
	case code >= 400 && code <= 699:
		return Behaviour{Kind: Reject, Code: code}
	}
	return Behaviour{Kind: Reject, Code: 404}
}

// rejectRing is how long a rejected call rings.
const rejectRing = 200 * time.Millisecond

// Server is the simulator.
type Server struct {
	log     *slog.Logger
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	dialogs *sipgo.DialogServerCache
	udp     net.PacketConn
	tcp     net.Listener
	host    string
	port    int

	base context.Context
	stop context.CancelFunc
	// mu orders wg.Add of a call answered during shutdown against wg.Wait in Run.
	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup
	// active counts answered calls not yet hung up.
	active atomic.Int64
}

// Active is the number of answered calls still up.
func (s *Server) Active() int { return int(s.active.Load()) }

// New binds addr (UDP and TCP) and builds the simulator.
func New(addr string, log *slog.Logger) (*Server, error) {
	udp, tcp, err := rtcsip.ListenUDPAndTCP(addr)
	if err != nil {
		return nil, err
	}
	a := udp.LocalAddr().(*net.UDPAddr)
	s := &Server{log: log, udp: udp, tcp: tcp, host: a.IP.String(), port: a.Port}
	sipLog := log.With("component", "sipgo")
	s.ua, err = sipgo.NewUA(sipgo.WithUserAgent("voipbin-carrier-sim"),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(sipLog)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(sipLog)))
	if err != nil {
		return nil, err
	}
	s.srv, err = sipgo.NewServer(s.ua, sipgo.WithServerLogger(sipLog))
	if err != nil {
		return nil, err
	}
	cli, err := sipgo.NewClient(s.ua, sipgo.WithClientLogger(sipLog), sipgo.WithClientHostname(s.host), sipgo.WithClientPort(s.port))
	if err != nil {
		return nil, err
	}
	s.dialogs = sipgo.NewDialogServerCache(cli, sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "carrier", Host: s.host, Port: s.port}})
	s.base, s.stop = context.WithCancel(context.Background())
	s.srv.OnInvite(s.onInvite)
	s.srv.OnAck(s.onAck)
	s.srv.OnBye(s.onBye)
	s.srv.OnOptions(func(req *sip.Request, tx sip.ServerTransaction) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	return s, nil
}

// Addr is the bound host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

// Run serves until ctx ends, then hangs up the calls it has answered.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- s.srv.ServeUDP(s.udp) }()
	go func() { errc <- s.srv.ServeTCP(s.tcp) }()
	s.log.InfoContext(ctx, "carrier simulator listening", "address", s.Addr())
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.stop()
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.wg.Wait()
	_ = s.udp.Close()
	_ = s.tcp.Close()
	_ = s.ua.Close()
	return err
}

func (s *Server) onAck(req *sip.Request, tx sip.ServerTransaction) { _ = s.dialogs.ReadAck(req, tx) }

func (s *Server) onBye(req *sip.Request, tx sip.ServerTransaction) {
	if err := s.dialogs.ReadBye(req, tx); err != nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
	}
}

// Handle is the INVITE entry point (also driven by the fuzz tests).
func (s *Server) Handle(req *sip.Request, tx sip.ServerTransaction) { s.onInvite(req, tx) }

func (s *Server) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	d, err := s.dialogs.ReadInvite(req, tx)
	if err != nil {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 400, "Bad Request", nil))
		return
	}
	defer d.Close()
	b := Plan(req.Recipient.User)
	log := s.log.With("call_id", req.CallID().Value(), "user", req.Recipient.User)
	if b.Kind == Reject && b.Code == 404 {
		_ = d.Respond(404, "Not Found", nil)
		return
	}
	if err := d.Respond(180, "Ringing", nil); err != nil {
		return
	}
	switch b.Kind {
	case Reject:
		// Ring a moment first, as a real network does: a final response hot on the heels of the
		// 180 can overtake it.
		select {
		case <-time.After(rejectRing):
		case <-tx.Done():
			return
		}
		_ = d.Respond(b.Code, reason(b.Code), nil)
		log.Info("rejected", "code", b.Code)
		return
	case RingForever:
		select { // the transaction answers a CANCEL with 487 by itself
		case <-d.Context().Done():
		case <-tx.Done():
		case <-s.base.Done():
			_ = d.Respond(480, "Temporarily Unavailable", nil)
		}
		return
	}
	select {
	case <-time.After(b.RingFor):
	case <-d.Context().Done():
		return
	case <-tx.Done():
		return
	case <-s.base.Done():
		_ = d.Respond(480, "Temporarily Unavailable", nil)
		return
	}
	rtp, err := net.ListenPacket("udp", net.JoinHostPort(s.host, "0"))
	if err != nil {
		_ = d.Respond(500, "Server Internal Error", nil)
		return
	}
	if err := d.RespondSDP(sdp(s.host, rtp.LocalAddr().(*net.UDPAddr).Port)); err != nil {
		_ = rtp.Close()
		return
	}
	s.mu.Lock()
	if s.closing { // answered as the simulator stops: the call ends with it
		s.mu.Unlock()
		_ = rtp.Close()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	log.Info("answered", "hangup_after", b.HangupAfter)
	s.active.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.active.Add(-1)
		defer rtp.Close()
		var hangup <-chan time.Time
		if b.HangupAfter > 0 {
			t := time.NewTimer(b.HangupAfter)
			defer t.Stop()
			hangup = t.C
		}
		select {
		case <-d.Context().Done(): // the caller's BYE
			log.Info("caller hung up")
			return
		case <-hangup:
		case <-s.base.Done():
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.Bye(ctx); err != nil {
			log.Warn("BYE failed", "error", err)
			return
		}
		log.Info("hung up")
	}()
	// Return only once the dialog is confirmed (ACK) so the INVITE transaction is not cut short.
	select {
	case <-tx.Done():
	case <-d.Context().Done():
	case <-time.After(32 * time.Second):
	}
}

func reason(code int) string {
	switch code {
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 480:
		return "Temporarily Unavailable"
	case 486:
		return "Busy Here"
	case 503:
		return "Service Unavailable"
	case 603:
		return "Decline"
	}
	return "Rejected"
}

func sdp(host string, port int) []byte {
	return []byte("v=0\r\no=carrier 1 1 IN IP4 " + host + "\r\ns=carrier-sim\r\nc=IN IP4 " + host + "\r\nt=0 0\r\n" +
		"m=audio " + strconv.Itoa(port) + " RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n")
}
