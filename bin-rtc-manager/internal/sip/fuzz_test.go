package sip_test

import (
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"

	rtcsip "voipbin/bin-rtc-manager/internal/sip"
	"voipbin/pkg/testenv"
)

// fakeTx is a server transaction that records responses.
type fakeTx struct {
	mu        sync.Mutex
	responses []*sip.Response
	done      chan struct{}
}

func newFakeTx() *fakeTx {
	d := make(chan struct{})
	close(d) // a terminated transaction: handlers that wait on it return at once
	return &fakeTx{done: d}
}

func (t *fakeTx) Terminate()                         {}
func (t *fakeTx) OnTerminate(sip.FnTxTerminate) bool { return true }
func (t *fakeTx) Done() <-chan struct{}              { return t.done }
func (t *fakeTx) Err() error                         { return nil }
func (t *fakeTx) Acks() <-chan *sip.Request          { return nil }
func (t *fakeTx) OnCancel(sip.FnTxCancel) bool       { return true }
func (t *fakeTx) Respond(res *sip.Response) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.responses = append(t.responses, res)
	return nil
}

// FuzzUAHandle drives the user agent's request handlers with whatever the SIP parser makes of
// arbitrary bytes: nothing may panic, and every request but ACK gets exactly one answer.
func FuzzUAHandle(f *testing.F) {
	for _, s := range []string{
		"BYE sip:voipbin@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK.1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
		"INVITE sip:voipbin@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK.2\r\nCSeq: 1 INVITE\r\n\r\n",
		"OPTIONS sip:x SIP/2.0\r\n\r\n",
		"CANCEL sip:x@y SIP/2.0\r\nCall-ID: \r\n\r\n",
		"BYE sip:x@y SIP/2.0\r\nTo: ;tag=\r\nFrom: <>\r\nCSeq: nope\r\n\r\n",
		"REGISTER sip:x SIP/2.0\r\nContent-Length: 99999999999\r\n\r\n",
		"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK.3\r\nCSeq: 1 INVITE\r\n\r\n",
		"\x00\xff garbage",
	} {
		f.Add([]byte(s))
	}
	ua, err := rtcsip.NewUA(rtcsip.Params{ListenAddress: "127.0.0.1:0", RTPPortMin: 20000, RTPPortMax: 30000, Log: testenv.Logger(f)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = ua.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := sip.ParseMessage(data)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok {
			return
		}
		tx := newFakeTx()
		ua.Handle(req, tx)
		if req.IsAck() {
			return
		}
		if len(tx.responses) != 1 {
			t.Fatalf("%d responses to %q, want 1", len(tx.responses), req.Method)
		}
		if c := tx.responses[0].StatusCode; c != 200 && c != 403 && c != 405 && c != 481 {
			t.Errorf("answered %d", c)
		}
	})
}
