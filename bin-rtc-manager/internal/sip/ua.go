// Package sip is the rtc manager's SIP user agent, on emiago/sipgo. It listens on UDP and TCP,
// dials outbound calls (an INVITE with a PCMU/PCMA SDP offer on a real local RTP port, digest
// authentication on dialogs to the trunk when it asks and credentials are set), runs each dialog in its own
// goroutine — ringing, answer and ACK, dial timeout with CANCEL, max duration and the end of the
// call's quota with BYE, remote BYE, local hang-up — and reports every step to the dialog service, which persists it. It can
// also end, from its stored state alone, a dialog that a dead node dialled.
package sip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

// Params configure a UA.
type Params struct {
	// ListenAddress is where to listen, UDP and TCP on the same port (port 0: any free port).
	ListenAddress string
	// ExternalAddress is put in Contact, Via and SDP; empty means the bound listen address (which
	// must then not be a wildcard).
	ExternalAddress string
	// Username and Password answer digest challenges when set, on dialogs to the trunk
	// (dialog.Dialog.Trunk) only.
	Username, Password string
	// RTPPortMin and RTPPortMax bound the local RTP ports.
	RTPPortMin, RTPPortMax int
	// Policy, when set, decides where sip destinations may be dialled (main always sets it).
	Policy *AddressPolicy
	// TCPIdleTimeout closes an inbound TCP connection that sent nothing for so long (0: never);
	// TCPMaxConnections caps the inbound TCP connections open at once (0: no cap).
	TCPIdleTimeout    time.Duration
	TCPMaxConnections int
	Log               *slog.Logger
	Registerer        prometheus.Registerer
}

// UA is the user agent.
type UA struct {
	p       Params
	log     *slog.Logger
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	cli     *sipgo.Client
	dialogs *sipgo.DialogClientCache

	udp      net.PacketConn
	tcp      net.Listener
	extHost  string
	extPort  int
	listenIP net.IP
	guard    *destinationGuard // nil: no address policy
	lim      *limits

	// base outlives RPC requests: dialogs run under it until Close.
	base     context.Context
	stopBase context.CancelFunc

	mu       sync.Mutex
	sessions map[string]*session
	draining bool
	wg       sync.WaitGroup

	dials    *prometheus.CounterVec
	outcomes *prometheus.CounterVec

	orphanBye func(ctx context.Context, sipCallID string, at, listening time.Time) bool
	bound     time.Time // when the listeners were bound: requests sent to the address since arrive
}

// OnOrphanBye sets who takes a BYE for a dialog this UA does not run (one a dead node, or this
// node's previous run, set up); fn reports whether it knew the dialog. Set it before Run.
func (u *UA) OnOrphanBye(fn func(ctx context.Context, sipCallID string, at, listening time.Time) bool) {
	u.orphanBye = fn
}

// NewUA binds the listeners (so the address is known before Run) and builds the user agent.
func NewUA(p Params) (*UA, error) {
	udp, tcp, err := ListenUDPAndTCP(p.ListenAddress)
	if err != nil {
		return nil, err
	}
	u := &UA{p: p, log: p.Log, udp: udp, tcp: tcp, bound: time.Now(), sessions: map[string]*session{}}
	bound := udp.LocalAddr().(*net.UDPAddr)
	u.listenIP = bound.IP
	ext := p.ExternalAddress
	if ext == "" {
		ext = net.JoinHostPort(bound.IP.String(), strconv.Itoa(bound.Port))
	}
	host, port, err := net.SplitHostPort(ext)
	if err != nil {
		u.closeListeners()
		return nil, fmt.Errorf("external address %q: %w", ext, err)
	}
	u.extHost = host
	u.extPort, _ = strconv.Atoi(port)
	if u.extPort == 0 {
		u.extPort = bound.Port
	}

	if p.Policy != nil {
		if u.guard, err = newDestinationGuard(*p.Policy, bound, hostPort{host: host, port: uint16(u.extPort)}); err != nil {
			u.closeListeners()
			return nil, err
		}
	}

	u.lim = newLimits()
	// sipgo logs through a handler that counts malformed messages and bounds what they cost.
	sipLog := slog.New(&sipLogHandler{next: p.Log.Handler(), lim: u.lim}).With("component", "sipgo")
	u.ua, err = sipgo.NewUA(sipgo.WithUserAgent("voipbin-rtc"), sipgo.WithUserAgentHostname(host),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(sipLog)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(sipLog)))
	if err != nil {
		u.closeListeners()
		return nil, err
	}
	u.srv, err = sipgo.NewServer(u.ua, sipgo.WithServerLogger(sipLog))
	if err != nil {
		u.closeListeners()
		return nil, err
	}
	u.cli, err = sipgo.NewClient(u.ua, sipgo.WithClientLogger(sipLog), sipgo.WithClientHostname(host), sipgo.WithClientPort(u.extPort))
	if err != nil {
		u.closeListeners()
		return nil, err
	}
	u.dialogs = sipgo.NewDialogClientCache(u.cli, sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "voipbin", Host: host, Port: u.extPort}})
	u.srv.OnBye(u.onBye)
	u.srv.OnInvite(u.onInvite)
	u.srv.OnOptions(u.onOptions)
	u.srv.OnCancel(u.onCancel)
	u.srv.OnAck(func(*sip.Request, sip.ServerTransaction) {}) // ACKs of our own 2xx never come; strays are ignored
	u.srv.OnNoRoute(u.onNoRoute)
	u.base, u.stopBase = context.WithCancel(context.Background())

	u.dials = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rtc_dials_total",
		Help: "INVITEs sent, by transport."}, []string{"transport"})
	u.outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rtc_dialogs_ended_total",
		Help: "Dialogs ended, by who ended them and the final SIP code."}, []string{"by", "sip_code"})
	if p.Registerer != nil {
		p.Registerer.MustRegister(u.dials, u.outcomes, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rtc_dialogs_active",
			Help: "Dialogs this node runs now."}, func() float64 { return float64(u.Active()) }))
		p.Registerer.MustRegister(u.lim.collectors()...)
	}
	return u, nil
}

// ListenUDPAndTCP binds UDP and TCP on the same address and port; with port 0 it retries until
// the port the kernel picked for UDP is free for TCP too.
func ListenUDPAndTCP(addr string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 10 {
		udp, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		if uc, ok := udp.(*net.UDPConn); ok {
			// Bursts of requests at a high call rate overflow the default buffer; the kernel caps
			// this at net.core.rmem_max.
			_ = uc.SetReadBuffer(4 << 20)
		}
		a := udp.LocalAddr().(*net.UDPAddr)
		tcp, err := net.Listen("tcp", net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port)))
		if err == nil {
			return udp, tcp, nil
		}
		_ = udp.Close()
		lastErr = err
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			break // a fixed port: retrying cannot help
		}
	}
	return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, lastErr)
}

func (u *UA) closeListeners() {
	_ = u.udp.Close()
	_ = u.tcp.Close()
}

// Addr is the address the UA is reached at (Contact).
func (u *UA) Addr() string { return net.JoinHostPort(u.extHost, strconv.Itoa(u.extPort)) }

// Run serves SIP until ctx ends.
func (u *UA) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- u.srv.ServeUDP(u.udp) }()
	tcp := &limitedListener{Listener: u.tcp, max: u.p.TCPMaxConnections, idle: u.p.TCPIdleTimeout, lim: u.lim,
		log: u.log.With("component", "sip-tcp")}
	go func() { errc <- u.srv.ServeTCP(tcp) }()
	u.log.InfoContext(ctx, "sip user agent listening", "udp", u.udp.LocalAddr().String(), "tcp", u.tcp.Addr().String(), "contact", u.Addr())
	select {
	case <-ctx.Done():
		u.closeListeners()
		return nil
	case err := <-errc:
		u.closeListeners()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("sip listener stopped: %w", err)
	}
}

// Close ends what is left and releases the transport; call HangupAll first to end dialogs cleanly.
func (u *UA) Close() error {
	u.stopBase()
	u.wg.Wait()
	return u.ua.Close()
}

// Active is the number of dialogs this UA runs.
func (u *UA) Active() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.sessions)
}

// Running reports whether this UA runs the call's dialog.
func (u *UA) Running(callID string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.sessions[callID]
	return ok
}

var errDraining = apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "the node is shutting down")

// Call builds and sends the INVITE for d, after p.Start has persisted d, and runs the dialog.
func (u *UA) Call(ctx context.Context, d *dialog.Dialog, src callapi.Address, p dialog.Progress) error {
	var ruri sip.Uri
	if err := sip.ParseUri(d.RequestURI, &ruri); err != nil || !validHost(ruri.Host) {
		return apierr.Invalid("destination.target", "is not a valid SIP URI")
	}
	fromUser, err := dialog.FromUser(src)
	if err != nil {
		return err
	}
	// Encoded here whatever the callers checked (see encode.go).
	if fromUser, err = sipUser(fromUser); err != nil {
		return apierr.Invalid("source.target", err.Error())
	}
	if ruri.User != "" {
		if ruri.User, err = sipUser(ruri.User); err != nil {
			return apierr.Invalid("destination.target", err.Error())
		}
	}
	transport := "UDP"
	if t, ok := ruri.UriParams.Get("transport"); ok {
		switch t {
		case "tcp", "TCP":
			transport = "TCP"
		case "udp", "UDP":
		default:
			return apierr.Invalid("destination.target", "transport must be udp or tcp")
		}
	}
	// A sip destination is resolved and checked here, and the INVITE goes to the checked address,
	// not to the name again. The trunk (tel) is the operator's own choice.
	var dest netip.AddrPort
	if !d.Trunk && u.guard != nil {
		if dest, err = u.guard.check(ctx, ruri.Host, ruri.Port); err != nil {
			return err
		}
	}
	rtp, err := openRTP(u.listenIP, u.p.RTPPortMin, u.p.RTPPortMax)
	if err != nil {
		return apierr.Newf(apierr.Unavailable, rtcapi.ErrReasonDialFailed, "no free RTP port: %v", err)
	}

	req := sip.NewRequest(sip.INVITE, ruri)
	req.SetTransport(transport)
	if dest.IsValid() {
		req.SetDestination(dest.String())
	}
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: transport, Host: u.extHost, Port: u.extPort, Params: sip.NewParams()}
	via.Params.Add("branch", sip.GenerateBranchN(16))
	from := &sip.FromHeader{DisplayName: displayName(src.Name), Address: sip.Uri{Scheme: "sip", User: fromUser, Host: u.extHost}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(16))
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: ruri.User, Host: ruri.Host, Port: ruri.Port}, Params: sip.NewParams()}
	callID := sip.CallIDHeader(sip.GenerateTagN(32))
	maxFwd := sip.MaxForwardsHeader(70)
	contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "voipbin", Host: u.extHost, Port: u.extPort}}
	if transport == "TCP" {
		contact.Address.UriParams = sip.NewParams()
		contact.Address.UriParams.Add("transport", "tcp")
	}
	req.AppendHeader(via)
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.INVITE})
	req.AppendHeader(&maxFwd)
	req.AppendHeader(contact)
	req.AppendHeader(sip.NewHeader("User-Agent", "voipbin-rtc"))
	req.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"))
	ct := sip.ContentTypeHeader("application/sdp")
	req.AppendHeader(&ct)
	req.SetBody(offer(u.extHost, rtp.LocalAddr().(*net.UDPAddr).Port))

	d.SIPCallID, d.Transport = string(callID), transport
	d.From, d.To, d.InviteVia, d.CSeq = from.Value(), to.Value(), via.Value(), 1

	s := &session{ua: u, callID: d.CallID, sipCallID: d.SIPCallID, trunk: d.Trunk, rtp: rtp, hangup: make(chan struct{}), done: make(chan struct{}),
		quotaSet: make(chan struct{}, 1), dialTimeout: d.DialTimeout, maxDuration: d.MaxDuration, p: p}
	s.quota.Store(int64(d.Quota))
	s.ctx = telemetry.WithCallID(telemetry.WithCustomerID(u.base, d.CustomerID), d.CallID)
	if rid := telemetry.RequestID(ctx); rid != "" {
		s.ctx = telemetry.WithRequestID(s.ctx, rid)
	}
	u.mu.Lock()
	if u.draining {
		u.mu.Unlock()
		_ = rtp.Close()
		return errDraining
	}
	if _, dup := u.sessions[d.CallID]; dup {
		u.mu.Unlock()
		_ = rtp.Close()
		return dialog.ErrExists
	}
	u.sessions[d.CallID] = s
	u.wg.Add(1)
	u.mu.Unlock()

	started := false
	defer func() {
		if !started {
			u.forget(s)
			_ = rtp.Close()
			close(s.done) // a Hangup that found the session in the meantime returns
			u.wg.Done()
		}
	}()
	if err := p.Start(ctx, d); err != nil {
		return err
	}
	sess, err := u.dialogs.WriteInvite(u.base, req)
	if err != nil {
		// The dialog is stored: end it, so the call manager learns the dial failed.
		p.Ended(s.ctx, d.CallID, dialog.End{By: callapi.HangupByRemote})
		u.outcomes.WithLabelValues(callapi.HangupByRemote, "0").Inc()
		return apierr.Newf(apierr.Unavailable, rtcapi.ErrReasonDialFailed, "sending the INVITE to %s failed: %v", d.RequestURI, err)
	}
	u.dials.WithLabelValues(transport).Inc()
	started = true
	s.sess = sess
	go s.run()
	return nil
}

func (u *UA) forget(s *session) {
	u.mu.Lock()
	if u.sessions[s.callID] == s {
		delete(u.sessions, s.callID)
	}
	u.mu.Unlock()
}

// Extend raises the quota of a dialog this UA runs; false if it runs no such dialog.
func (u *UA) Extend(callID string, quota int) bool {
	u.mu.Lock()
	s, ok := u.sessions[callID]
	u.mu.Unlock()
	if ok {
		s.extend(quota)
	}
	return ok
}

// Hangup ends a dialog this UA runs, reporting reason in its end, and waits until its end is
// recorded.
func (u *UA) Hangup(ctx context.Context, callID, reason string) (bool, error) {
	u.mu.Lock()
	s, ok := u.sessions[callID]
	u.mu.Unlock()
	if !ok {
		return false, nil
	}
	s.requestHangup(reason)
	select {
	case <-s.done:
		return true, nil
	case <-ctx.Done():
		return true, apierr.New(apierr.Unavailable, apierr.ReasonRequestTimeout, "the dialog is ending but has not ended yet")
	}
}

// HangupAll stops taking dials and ends every dialog (CANCEL or BYE), waiting until their ends
// are recorded or ctx ends.
func (u *UA) HangupAll(ctx context.Context) error {
	u.mu.Lock()
	u.draining = true
	all := make([]*session, 0, len(u.sessions))
	for _, s := range u.sessions {
		all = append(all, s)
	}
	u.mu.Unlock()
	for _, s := range all {
		s.requestHangup("")
	}
	for _, s := range all {
		select {
		case <-s.done:
		case <-ctx.Done():
			return fmt.Errorf("%d dialogs still ending: %w", u.Active(), ctx.Err())
		}
	}
	return nil
}

// EndStateless ends a dialog from its stored state: a BYE (in its own transaction, from this
// node) once answered, else a CANCEL matching the dead node's INVITE. It returns the SIP code to
// record (200 for an answered dialog, 487 for a cancelled one) and who ended the dialog: remote
// when the peer answers the BYE with 481 (it had already ended the dialog, with a BYE the dead
// node never saw), local otherwise.
func (u *UA) EndStateless(ctx context.Context, d dialog.Dialog) (dialog.End, error) {
	if d.State == dialog.StateAnswered {
		end := dialog.End{SIPCode: 200, By: callapi.HangupByLocal}
		bye, err := statelessBye(d)
		if err != nil {
			return end, err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		res, err := u.cli.Do(cctx, bye)
		switch {
		case err != nil:
			return end, fmt.Errorf("BYE: %w", err)
		case res.StatusCode == 481:
			end.By = callapi.HangupByRemote
			return end, nil
		case res.StatusCode >= 300:
			return end, fmt.Errorf("BYE answered %d", res.StatusCode)
		}
		return end, nil
	}
	end := dialog.End{SIPCode: 487, By: callapi.HangupByLocal}
	cancelReq, err := statelessCancel(d)
	if err != nil {
		return end, err
	}
	// The answer goes to the dead node's Via: send and forget.
	if err := u.cli.WriteRequest(cancelReq); err != nil {
		return end, fmt.Errorf("CANCEL: %w", err)
	}
	return end, nil
}

// ---- incoming requests ---------------------------------------------------------------------------

func respond(tx sip.ServerTransaction, req *sip.Request, code int, reason string, log *slog.Logger) {
	if err := tx.Respond(sip.NewResponseFromRequest(req, code, reason, nil)); err != nil {
		log.Debug("sip respond failed", "code", code, "error", err)
	}
}

func (u *UA) onBye(req *sip.Request, tx sip.ServerTransaction) {
	at := time.Now()
	if err := u.dialogs.ReadBye(req, tx); err == nil {
		return
	}
	if cid := req.CallID(); cid != nil && u.orphanBye != nil && !u.runsSIPCall(string(*cid)) {
		var listening time.Time
		if strings.EqualFold(req.Transport(), "UDP") {
			listening = u.bound
		}
		if u.orphanBye(u.base, string(*cid), at, listening) {
			respond(tx, req, 200, "OK", u.log)
			return
		}
	}
	respond(tx, req, 481, "Call/Transaction Does Not Exist", u.log)
}

// runsSIPCall reports whether a dialog this UA runs has the SIP Call-ID (a BYE for it that the
// dialog cache refused is malformed, not an orphan's).
func (u *UA) runsSIPCall(sipCallID string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range u.sessions {
		if s.sipCallID == sipCallID {
			return true
		}
	}
	return false
}

func (u *UA) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	// The rtc manager only dials out.
	respond(tx, req, 403, "Inbound Calls Not Served", u.log)
}

func (u *UA) onOptions(req *sip.Request, tx sip.ServerTransaction) {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"))
	_ = tx.Respond(res)
}

func (u *UA) onCancel(req *sip.Request, tx sip.ServerTransaction) {
	respond(tx, req, 481, "Call/Transaction Does Not Exist", u.log)
}

func (u *UA) onNoRoute(req *sip.Request, tx sip.ServerTransaction) {
	respond(tx, req, 405, "Method Not Allowed", u.log)
}

// Handle runs a parsed request through the handlers as the server would. It is the entry point
// the fuzz tests drive.
func (u *UA) Handle(req *sip.Request, tx sip.ServerTransaction) {
	switch req.Method {
	case sip.BYE:
		u.onBye(req, tx)
	case sip.INVITE:
		u.onInvite(req, tx)
	case sip.OPTIONS:
		u.onOptions(req, tx)
	case sip.CANCEL:
		u.onCancel(req, tx)
	case sip.ACK:
	default:
		u.onNoRoute(req, tx)
	}
}

var _ dialog.Phone = (*UA)(nil)

// errors the session distinguishes when its dial context ends.
var (
	errDialTimeout = errors.New("dial timeout")
	errHangup      = errors.New("local hangup")
)
