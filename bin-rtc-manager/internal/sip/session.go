package sip

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/pkg/callapi"
)

// session runs one outbound dialog from the INVITE to its end.
type session struct {
	ua          *UA
	ctx         context.Context // carries customer and call ids; ends at UA Close
	callID      string
	sipCallID   string
	trunk       bool // the dialog goes to the tel trunk: its credentials may answer challenges
	sess        *sipgo.DialogClientSession
	rtp         net.PacketConn
	p           dialog.Progress
	dialTimeout time.Duration
	maxDuration time.Duration

	// quota is the talk time paid for, in seconds from the answer (0: none); quotaSet wakes the
	// talk loop when it grows.
	quota    atomic.Int64
	quotaSet chan struct{}

	hangupOnce   sync.Once
	hangupReason string        // written before hangup is closed
	hangup       chan struct{} // closed by a local hang-up
	done         chan struct{} // closed once the end is recorded
}

// requestHangup asks the session to end, reporting reason; the first request's reason wins.
func (s *session) requestHangup(reason string) {
	s.hangupOnce.Do(func() { s.hangupReason = reason; close(s.hangup) })
}

// extend raises the quota to quota seconds from the answer; a lower one changes nothing.
func (s *session) extend(quota int) {
	for {
		cur := s.quota.Load()
		if int64(quota) <= cur {
			return
		}
		if s.quota.CompareAndSwap(cur, int64(quota)) {
			break
		}
	}
	select {
	case s.quotaSet <- struct{}{}:
	default: // a wake-up is already pending; it reads the latest quota
	}
}

func (s *session) run() {
	defer s.ua.wg.Done()
	defer close(s.done)
	defer s.ua.forget(s)
	defer s.rtp.Close()
	defer s.sess.Close()
	go drain(s.rtp)

	end, answered := s.dial()
	if end == nil {
		end = s.talk(answered)
	}
	if end.At.IsZero() {
		end.At = time.Now() // the moment the end became known, however late it is recorded
	}
	s.p.Ended(s.ctx, s.callID, *end)
	s.ua.outcomes.WithLabelValues(end.By, strconv.Itoa(end.SIPCode)).Inc()
	s.ua.log.InfoContext(s.ctx, "dialog ended", "by", end.By, "sip_code", end.SIPCode, "reason", end.Reason)
}

// dial waits for the answer. It returns nil and the moment of the answer once answered and ACKed,
// else how the dial ended.
func (s *session) dial() (*dialog.End, time.Time) {
	dctx, cancel := context.WithCancelCause(s.ctx)
	defer cancel(nil)
	timer := time.AfterFunc(s.dialTimeout, func() { cancel(errDialTimeout) })
	defer timer.Stop()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-s.hangup:
			cancel(errHangup)
		case <-stop:
		}
	}()

	opts := sipgo.AnswerOptions{
		OnResponse: func(res *sip.Response) error {
			if res.StatusCode == 180 || res.StatusCode == 183 {
				s.p.Ringing(s.ctx, s.callID, res.StatusCode)
			}
			return nil
		},
	}
	// The trunk's credentials answer only the trunk: any other server that challenges would get
	// a digest over its own nonce, crackable offline. Without them a 401/407 ends the dial.
	if s.trunk {
		opts.Username, opts.Password = s.ua.p.Username, s.ua.p.Password
	}
	err := s.sess.WaitAnswer(dctx, opts)
	res := s.sess.InviteResponse
	if err == nil || (res != nil && res.IsSuccess()) {
		answered := answerOf(res)
		answered.At = time.Now() // also where the quota counts from
		// Answered, possibly just as we cancelled: ACK it, then hang up if that was asked.
		if aerr := s.sess.Ack(s.ctx); aerr != nil {
			s.ua.log.WarnContext(s.ctx, "sending ACK failed", "error", aerr)
		}
		s.p.Answered(s.ctx, s.callID, answered)
		if err != nil {
			cause := context.Cause(dctx)
			return s.bye(s.reasonOf(cause)), answered.At
		}
		return nil, answered.At
	}
	var rerr *sipgo.ErrDialogResponse
	if errors.As(err, &rerr) {
		return &dialog.End{SIPCode: rerr.Res.StatusCode, By: callapi.HangupByRemote}, time.Time{}
	}
	switch cause := context.Cause(dctx); {
	case errors.Is(cause, errDialTimeout), errors.Is(cause, errHangup):
		code := 0
		if res != nil && !res.IsProvisional() {
			code = res.StatusCode // normally 487
		}
		return &dialog.End{SIPCode: code, By: callapi.HangupByLocal, Reason: s.reasonOf(cause)}, time.Time{}
	case s.ctx.Err() != nil:
		return &dialog.End{By: callapi.HangupByLocal}, time.Time{}
	}
	// No final response: timer B, or the transport failed.
	s.ua.log.WarnContext(s.ctx, "INVITE got no final response", "error", err)
	return &dialog.End{SIPCode: 408, By: callapi.HangupByRemote}, time.Time{}
}

func (s *session) reasonOf(cause error) string {
	switch {
	case errors.Is(cause, errDialTimeout):
		return callapi.ReasonNoanswer
	case errors.Is(cause, errHangup):
		return s.hangupReason
	}
	return ""
}

// talk waits for the end of an answered dialog: a remote BYE, a local hang-up, the max duration,
// or the end of its quota (answered + quota, moved on by extend) — the hard deadline that holds
// even when nobody can be asked for more.
func (s *session) talk(answered time.Time) *dialog.End {
	timer := time.NewTimer(s.maxDuration)
	defer timer.Stop()
	deadline := time.NewTimer(time.Hour)
	deadline.Stop()
	defer deadline.Stop()
	arm := func() {
		if q := s.quota.Load(); q > 0 {
			deadline.Reset(time.Until(answered.Add(time.Duration(q) * time.Second)))
		}
	}
	arm()
	for {
		select {
		case <-s.sess.Context().Done():
			return &dialog.End{SIPCode: 200, By: callapi.HangupByRemote}
		case <-s.hangup:
			return s.bye(s.hangupReason)
		case <-timer.C:
			return s.bye(callapi.ReasonTimeout)
		case <-deadline.C:
			s.ua.log.InfoContext(s.ctx, "quota used up; ending the call", "quota", s.quota.Load())
			return s.bye(callapi.ReasonBalanceExhausted)
		case <-s.quotaSet:
			arm()
		case <-s.ctx.Done():
			return s.bye("")
		}
	}
}

// bye ends an answered dialog from our side.
func (s *session) bye(reason string) *dialog.End {
	at := time.Now() // the call ends when we decide so, not when the far end confirms
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 10*time.Second)
	defer cancel()
	if err := s.sess.Bye(ctx); err != nil {
		s.ua.log.WarnContext(s.ctx, "BYE failed; the dialog is over on our side", "error", err)
	}
	s.p.CSeq(s.ctx, s.callID, s.sess.CSEQ())
	return &dialog.End{At: at, SIPCode: 200, By: callapi.HangupByLocal, Reason: reason}
}

// answerOf takes what a node needs to send a BYE later from the 2xx.
func answerOf(res *sip.Response) dialog.Answer {
	a := dialog.Answer{SIPCode: res.StatusCode}
	if to := res.To(); to != nil {
		a.To = to.Value()
	}
	if c := res.Contact(); c != nil {
		a.RemoteTarget = c.Address.String()
	}
	rr := res.GetHeaders("Record-Route")
	for i := len(rr) - 1; i >= 0; i-- { // a UAC's route set is the Record-Route reversed
		a.RouteSet = append(a.RouteSet, rr[i].Value())
	}
	return a
}

// openRTP binds a UDP port for media in [min, max].
func openRTP(ip net.IP, minPort, maxPort int) (net.PacketConn, error) {
	var err error
	for range 64 {
		port := minPort + rand.N(maxPort-minPort+1)
		port &^= 1 // RTP on even ports
		if port < minPort {
			port += 2
		}
		var c net.PacketConn
		c, err = net.ListenPacket("udp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err == nil {
			return c, nil
		}
	}
	return nil, err
}

// drain reads and drops media until the socket closes: the port is real, and a peer sending
// RTP to it gets no ICMP errors.
func drain(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		if _, _, err := c.ReadFrom(buf); err != nil {
			return
		}
	}
}

// offer is the SDP offer: PCMU and PCMA (and DTMF events) on port.
func offer(host string, port int) []byte {
	ipv := "IP4"
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		ipv = "IP6"
	}
	id := strconv.FormatInt(time.Now().UnixNano()/1000, 10)
	return []byte("v=0\r\n" +
		"o=voipbin " + id + " " + id + " IN " + ipv + " " + host + "\r\n" +
		"s=voipbin\r\n" +
		"c=IN " + ipv + " " + host + "\r\n" +
		"t=0 0\r\n" +
		"m=audio " + strconv.Itoa(port) + " RTP/AVP 0 8 101\r\n" +
		"a=rtpmap:0 PCMU/8000\r\n" +
		"a=rtpmap:8 PCMA/8000\r\n" +
		"a=rtpmap:101 telephone-event/8000\r\n" +
		"a=fmtp:101 0-16\r\n" +
		"a=ptime:20\r\n" +
		"a=sendrecv\r\n")
}

// statelessBye builds the BYE of a stored, answered dialog.
func statelessBye(d dialog.Dialog) (*sip.Request, error) {
	target := d.RemoteTarget
	if target == "" {
		target = d.RequestURI
	}
	var b strings.Builder
	fmt.Fprintf(&b, "BYE %s SIP/2.0\r\n", target)
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d BYE\r\nMax-Forwards: 70\r\n", d.From, d.To, d.SIPCallID, d.CSeq+1)
	for _, r := range d.RouteSet {
		fmt.Fprintf(&b, "Route: %s\r\n", r)
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	req, err := parseRequest(b.String())
	if err != nil {
		return nil, fmt.Errorf("build BYE: %w", err)
	}
	req.SetTransport(d.Transport)
	if rt := req.Route(); rt != nil {
		req.SetDestination(rt.Address.HostPort())
	}
	return req, nil
}

// statelessCancel builds the CANCEL of a stored, unanswered dialog: same Request-URI, top Via
// (branch), From, To, Call-ID and CSeq number as its INVITE.
func statelessCancel(d dialog.Dialog) (*sip.Request, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "CANCEL %s SIP/2.0\r\n", d.RequestURI)
	fmt.Fprintf(&b, "Via: %s\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		d.InviteVia, d.From, d.To, d.SIPCallID)
	req, err := parseRequest(b.String())
	if err != nil {
		return nil, fmt.Errorf("build CANCEL: %w", err)
	}
	req.SetTransport(d.Transport)
	return req, nil
}

func parseRequest(s string) (*sip.Request, error) {
	msg, err := sip.ParseMessage([]byte(s))
	if err != nil {
		return nil, err
	}
	req, ok := msg.(*sip.Request)
	if !ok {
		return nil, errors.New("not a request")
	}
	return req, nil
}
