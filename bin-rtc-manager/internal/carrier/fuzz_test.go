package carrier_test

import (
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"

	"voipbin/bin-rtc-manager/internal/carrier"
	"voipbin/pkg/testenv"
)

func FuzzPlan(f *testing.F) {
	for _, s := range []string{"+1200000005", "+1180000000", "+1486000000", "+1503000000", "+1200999999999999999999", "", "+", "1", "+1\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, user string) {
		b := carrier.Plan(user)
		switch b.Kind {
		case carrier.Reject:
			if b.Code < 400 || b.Code > 699 {
				t.Errorf("Plan(%q) rejects with %d", user, b.Code)
			}
		case carrier.Answer:
			if b.HangupAfter < 0 || b.RingFor <= 0 {
				t.Errorf("Plan(%q) = %+v", user, b)
			}
		}
	})
}

type fakeTx struct {
	mu   sync.Mutex
	n    int
	done chan struct{}
}

func (t *fakeTx) Terminate()                         {}
func (t *fakeTx) OnTerminate(sip.FnTxTerminate) bool { return true }
func (t *fakeTx) Done() <-chan struct{}              { return t.done }
func (t *fakeTx) Err() error                         { return nil }
func (t *fakeTx) Acks() <-chan *sip.Request          { return nil }
func (t *fakeTx) OnCancel(sip.FnTxCancel) bool       { return true }
func (t *fakeTx) Respond(*sip.Response) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n++
	return nil
}

// FuzzCarrierInvite feeds the simulator's INVITE handler whatever the parser makes of arbitrary
// bytes; nothing may panic.
func FuzzCarrierInvite(f *testing.F) {
	for _, s := range []string{
		"INVITE sip:+1200000001@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:+1200000001@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5060>\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:+1486000000@h SIP/2.0\r\nCSeq: 1 INVITE\r\nContact: <sip:a@h>\r\n\r\n",
		"INVITE sip:@ SIP/2.0\r\nContact: *\r\nCSeq: 1 INVITE\r\nTo: x\r\n\r\n",
		"INVITE sip:x SIP/2.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	s, err := carrier.New("127.0.0.1:0", testenv.Logger(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := sip.ParseMessage(data)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok || !req.IsInvite() {
			return
		}
		done := make(chan struct{})
		close(done)
		s.Handle(req, &fakeTx{done: done})
	})
}
