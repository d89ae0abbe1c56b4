package dialog

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

// memStore is an in-memory Store that records emitted events and can fail on demand.
type memStore struct {
	mu      sync.Mutex
	dialogs map[string]Dialog
	events  []Emitted
	fail    int // Update fails this many more times
	// down runs on each failed Update (a test advances its clock: time passes while it is down).
	down  func()
	alive map[string]time.Time // nodes' last heartbeats
}

func newMemStore(ds ...Dialog) *memStore {
	s := &memStore{dialogs: map[string]Dialog{}}
	for _, d := range ds {
		s.dialogs[d.CallID] = d
	}
	return s
}

func (s *memStore) Create(_ context.Context, d *Dialog) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.dialogs[d.CallID]; ok {
		return ErrExists
	}
	s.dialogs[d.CallID] = *d
	return nil
}

func (s *memStore) Update(_ context.Context, id string, fn func(*Dialog) ([]Emitted, error)) (*Dialog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		if s.down != nil {
			s.down()
		}
		return nil, errors.New("store down")
	}
	d, ok := s.dialogs[id]
	if !ok {
		return nil, ErrNotFound
	}
	evs, err := fn(&d)
	if err != nil {
		return nil, err
	}
	s.dialogs[id] = d
	s.events = append(s.events, evs...)
	return &d, nil
}

func (s *memStore) Get(_ context.Context, id string) (*Dialog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dialogs[id]
	if !ok {
		return nil, ErrNotFound
	}
	return &d, nil
}

func (s *memStore) Live(_ context.Context, node string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, d := range s.dialogs {
		if d.NodeID == node && d.State.Live() {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func (s *memStore) setFail(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = n
}

func (s *memStore) Alive(_ context.Context, node string) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.alive[node], nil
}

func (s *memStore) ended() []rtcapi.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []rtcapi.Event
	for _, e := range s.events {
		if e.Type == rtcapi.EventEnded {
			out = append(out, e.Data)
		}
	}
	return out
}

// fakePhone records what it is asked to do.
type fakePhone struct {
	running   map[string]bool
	hungUp    []string
	reasons   []string
	extended  map[string]int
	stateless []string
	callErr   error
	peerGone  bool // the peer answers a stateless BYE with 481
}

func (p *fakePhone) Extend(id string, quota int) bool {
	if !p.running[id] {
		return false
	}
	if p.extended == nil {
		p.extended = map[string]int{}
	}
	p.extended[id] = quota
	return true
}

func (p *fakePhone) Call(ctx context.Context, d *Dialog, _ callapi.Address, pr Progress) error {
	if p.callErr != nil {
		return p.callErr
	}
	d.SIPCallID = "sip-" + d.CallID
	return pr.Start(ctx, d)
}

func (p *fakePhone) Hangup(_ context.Context, id, reason string) (bool, error) {
	if p.running[id] {
		p.hungUp = append(p.hungUp, id)
		p.reasons = append(p.reasons, reason)
		return true, nil
	}
	return false, nil
}

func (p *fakePhone) EndStateless(_ context.Context, d Dialog) (End, error) {
	p.stateless = append(p.stateless, d.CallID)
	if d.State == StateAnswered {
		if p.peerGone {
			return End{SIPCode: 200, By: callapi.HangupByRemote}, nil
		}
		return End{SIPCode: 200, By: callapi.HangupByLocal}, nil
	}
	return End{SIPCode: 487, By: callapi.HangupByLocal}, nil
}

type fakeForward struct {
	err   error
	calls []string
}

func (f *fakeForward) HangupReason(_ context.Context, node, id, reason string) error {
	f.calls = append(f.calls, node+"/"+id+"/"+reason)
	return f.err
}

type kicks struct{ n int }

func (k *kicks) Kick() { k.n++ }

func newService(store Store, phone Phone, fwd Forwarder) *Service {
	return NewService(Params{NodeID: "me", TrunkURI: "sip:{number}@127.0.0.1:5080", DialTimeout: time.Minute, MaxDuration: time.Hour,
		Store: store, Phone: phone, Forward: fwd, Relay: &kicks{}, Log: testenv.Logger(nil)})
}

func TestExtend(t *testing.T) {
	store := newMemStore(Dialog{CallID: "c", NodeID: "me", State: StateAnswered, Quota: 60}, Dialog{CallID: "gone", NodeID: "me", State: StateEnded})
	phone := &fakePhone{running: map[string]bool{"c": true}}
	svc := newService(store, phone, &fakeForward{})
	if err := svc.Extend(context.Background(), "c", 120); err != nil || phone.extended["c"] != 120 {
		t.Fatalf("Extend() = %v, phone quota %d; want nil, 120", err, phone.extended["c"])
	}
	if d, _ := store.Get(context.Background(), "c"); d.Quota != 120 || d.Info().Quota != 120 {
		t.Fatalf("stored quota = %d, want 120", d.Quota)
	}
	if err := svc.Extend(context.Background(), "gone", 120); !apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound) {
		t.Fatalf("Extend(ended) = %v, want DIALOG_NOT_FOUND", err)
	}
	if err := svc.Extend(context.Background(), "c", 0); !apierr.HasReason(err, apierr.ReasonInvalidArgument) {
		t.Fatalf("Extend(0) = %v, want INVALID_ARGUMENT", err)
	}
}

func TestHangup(t *testing.T) {
	unavailable := apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "no consumer")
	tests := []struct {
		name          string
		stored        []Dialog
		running       map[string]bool
		forwardErr    error
		viaNode       bool
		reason        string
		wantErrReason string
		wantHungUp    bool
		wantForwarded bool
		wantStateless bool
		wantEnded     *rtcapi.Event
	}{
		{name: "running here", stored: []Dialog{{CallID: "c", NodeID: "me", State: StateRinging}}, running: map[string]bool{"c": true}, wantHungUp: true},
		{name: "unknown", wantErrReason: rtcapi.ErrReasonDialogNotFound},
		{name: "already ended", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateEnded}}},
		{name: "owner alive", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateAnswered}}, wantForwarded: true},
		{name: "owner refuses", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateAnswered}},
			forwardErr: apierr.New(apierr.NotFound, rtcapi.ErrReasonDialogNotFound, "gone"), wantForwarded: true, wantErrReason: rtcapi.ErrReasonDialogNotFound},
		{name: "owner dead, answered: BYE from state", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateAnswered, TMAnswered: time.Now()}},
			forwardErr: unavailable, wantForwarded: true, wantStateless: true, wantEnded: &rtcapi.Event{SIPCode: 200, Cause: 16, By: "local"}},
		{name: "owner dead, ringing: CANCEL from state", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateRinging}},
			forwardErr: unavailable, wantForwarded: true, wantStateless: true, wantEnded: &rtcapi.Event{SIPCode: 487, Cause: 16, By: "local"}},
		{name: "own dialog left by a previous run", stored: []Dialog{{CallID: "c", NodeID: "me", State: StateAnswered}},
			wantStateless: true, wantEnded: &rtcapi.Event{SIPCode: 200, Cause: 16, By: "local"}},
		{name: "owner dead, quota used up: the reason is reported", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateAnswered, TMAnswered: time.Now()}},
			reason: "balance_exhausted", forwardErr: unavailable, wantForwarded: true, wantStateless: true,
			wantEnded: &rtcapi.Event{SIPCode: 200, Cause: 16, By: "local", Reason: "balance_exhausted"}},
		{name: "an unknown reason", reason: "because", wantErrReason: apierr.ReasonInvalidArgument},
		{name: "on the node queue: never forwarded", stored: []Dialog{{CallID: "c", NodeID: "other", State: StateAnswered}}, viaNode: true,
			wantStateless: true, wantEnded: &rtcapi.Event{SIPCode: 200, Cause: 16, By: "local"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newMemStore(tt.stored...)
			phone := &fakePhone{running: tt.running}
			fwd := &fakeForward{err: tt.forwardErr}
			err := newService(store, phone, fwd).Hangup(context.Background(), "c", tt.reason, tt.viaNode)
			if tt.wantErrReason != "" {
				if !apierr.HasReason(err, tt.wantErrReason) {
					t.Fatalf("Hangup() = %v, want %s", err, tt.wantErrReason)
				}
			} else if err != nil {
				t.Fatalf("Hangup() = %v", err)
			}
			if got := len(phone.hungUp) > 0; got != tt.wantHungUp {
				t.Errorf("hung up locally = %v, want %v", got, tt.wantHungUp)
			}
			if got := len(fwd.calls) > 0; got != tt.wantForwarded {
				t.Errorf("forwarded = %v (%v), want %v", got, fwd.calls, tt.wantForwarded)
			}
			if got := len(phone.stateless) > 0; got != tt.wantStateless {
				t.Errorf("ended from state = %v, want %v", got, tt.wantStateless)
			}
			ended := store.ended()
			if tt.wantEnded == nil {
				if len(ended) != 0 {
					t.Errorf("ended events = %+v, want none", ended)
				}
				return
			}
			if len(ended) != 1 || ended[0].SIPCode != tt.wantEnded.SIPCode || ended[0].Cause != tt.wantEnded.Cause || ended[0].By != tt.wantEnded.By {
				t.Errorf("ended events = %+v, want one like %+v", ended, *tt.wantEnded)
			}
		})
	}
}

func TestDial(t *testing.T) {
	store := newMemStore()
	svc := newService(store, &fakePhone{}, nil)
	req := rtcapi.DialRequest{CallID: "c1", CustomerID: "cust", Destination: callapi.Address{Type: "tel", Target: "+15550001111"}, DialTimeout: 5}
	got, err := svc.Dial(context.Background(), req)
	if err != nil || got != (rtcapi.DialResponse{NodeID: "me", SIPCallID: "sip-c1"}) {
		t.Fatalf("Dial() = %+v, %v", got, err)
	}
	d, _ := store.Get(context.Background(), "c1")
	if d.RequestURI != "sip:+15550001111@127.0.0.1:5080" || !d.Trunk || d.DialTimeout != 5*time.Second || d.MaxDuration != time.Hour || d.State != StateCalling {
		t.Errorf("stored dialog = %+v", d)
	}
	// A sip destination is not the trunk: its dialog may not use the trunk's credentials.
	if _, err := svc.Dial(context.Background(), rtcapi.DialRequest{CallID: "c3", CustomerID: "cust",
		Destination: callapi.Address{Type: "sip", Target: "bob@example.com"}}); err != nil {
		t.Fatal(err)
	}
	if d, _ := store.Get(context.Background(), "c3"); d.Trunk || d.RequestURI != "sip:bob@example.com" {
		t.Errorf("stored sip dialog = %+v, want Trunk false", d)
	}
	// The same dial again (a redelivery) answers the same.
	if again, err := svc.Dial(context.Background(), req); err != nil || again != got {
		t.Errorf("second Dial() = %+v, %v", again, err)
	}
	// A failing phone's typed error comes back as it is.
	failing := newService(newMemStore(), &fakePhone{callErr: apierr.New(apierr.Unavailable, rtcapi.ErrReasonDialFailed, "x")}, nil)
	if _, err := failing.Dial(context.Background(), rtcapi.DialRequest{CallID: "c2", CustomerID: "cust",
		Destination: callapi.Address{Type: "tel", Target: "+15550001111"}}); !apierr.HasReason(err, rtcapi.ErrReasonDialFailed) {
		t.Errorf("Dial() = %v, want %s", err, rtcapi.ErrReasonDialFailed)
	}
}

// A change the store cannot take yet is retried, not lost.
func TestRecordRetriesUntilStored(t *testing.T) {
	store := newMemStore(Dialog{CallID: "c", NodeID: "me", State: StateAnswered})
	store.setFail(3)
	svc := newService(store, &fakePhone{}, nil)
	svc.Ended(context.Background(), "c", End{SIPCode: 200, By: "remote"})
	if ended := store.ended(); len(ended) != 1 {
		t.Fatalf("ended events = %+v, want one after the store came back", ended)
	}
}

// An event carries the time its fact happened, not the time the store finally took it: the
// store is down for 6 s of the service's clock while the changes wait. The SIP side is never held
// up by the store, except by Ended, which returns once everything is stored.
func TestEventsCarryFactTime(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := t0
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	store := newMemStore(Dialog{CallID: "c", NodeID: "me", State: StateCalling})
	store.down = func() { mu.Lock(); clock = clock.Add(time.Second); mu.Unlock() }
	store.setFail(6)
	svc := newService(store, &fakePhone{}, nil)
	svc.now = now

	svc.Ringing(context.Background(), "c", 180) // at t0; returns at once although the store is down
	answeredAt := t0.Add(500 * time.Millisecond)
	svc.Answered(context.Background(), "c", Answer{At: answeredAt, SIPCode: 200})
	byeAt := t0.Add(3 * time.Second)
	svc.Ended(context.Background(), "c", End{At: byeAt, SIPCode: 200, By: callapi.HangupByRemote})

	store.mu.Lock()
	defer store.mu.Unlock()
	if got := len(store.events); got != 3 {
		t.Fatalf("%d events, want 3", got)
	}
	for i, want := range []time.Time{t0, answeredAt, byeAt} {
		if got := store.events[i].Data.At; !got.Equal(want) {
			t.Errorf("%s at %s, want the fact time %s (stored at %s)", store.events[i].Type, got, want, now())
		}
	}
}

// Ringing and Answered do not wait for a store that is down; their changes are stored, in order,
// once it is back.
func TestChangesDoNotWaitForTheStore(t *testing.T) {
	store := newMemStore(Dialog{CallID: "c", NodeID: "me", State: StateCalling})
	store.setFail(1 << 30)
	svc := newService(store, &fakePhone{}, nil)
	returned := make(chan struct{})
	go func() {
		svc.Ringing(context.Background(), "c", 180)
		svc.Answered(context.Background(), "c", Answer{SIPCode: 200})
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Ringing/Answered waited for the store")
	}
	store.setFail(0)
	svc.Ended(context.Background(), "c", End{SIPCode: 200, By: callapi.HangupByRemote})
	store.mu.Lock()
	defer store.mu.Unlock()
	var got []string
	for _, e := range store.events {
		got = append(got, e.Type)
	}
	if want := []string{rtcapi.EventRinging, rtcapi.EventAnswered, rtcapi.EventEnded}; !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
}

// A dialog left by a dead node whose peer answers the stateless BYE with 481 had been hung up by
// the peer while nobody listened: it ends by remote, at the node's last heartbeat.
func TestTakeOverRecordsWhatIsKnown(t *testing.T) {
	answered := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	lastBeat := answered.Add(2 * time.Second)
	tests := []struct {
		name     string
		peerGone bool
		wantBy   string
		wantAt   time.Time
	}{
		{"peer already hung up", true, callapi.HangupByRemote, lastBeat},
		{"peer still in the call", false, callapi.HangupByLocal, answered.Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newMemStore(Dialog{CallID: "c", NodeID: "dead", State: StateAnswered, TMCreate: answered.Add(-time.Second), TMAnswered: answered})
			store.alive = map[string]time.Time{"dead": lastBeat}
			svc := newService(store, &fakePhone{peerGone: tt.peerGone}, nil)
			svc.now = func() time.Time { return answered.Add(time.Minute) }
			if err := svc.Hangup(context.Background(), "c", "", true); err != nil {
				t.Fatal(err)
			}
			ended := store.ended()
			if len(ended) != 1 || ended[0].By != tt.wantBy || !ended[0].At.Equal(tt.wantAt) {
				t.Fatalf("ended = %+v, want by %s at %s", ended, tt.wantBy, tt.wantAt)
			}
		})
	}
}

func TestReap(t *testing.T) {
	store := newMemStore(
		Dialog{CallID: "orphan", NodeID: "me", State: StateAnswered},
		Dialog{CallID: "running", NodeID: "me", State: StateRinging},
		Dialog{CallID: "theirs", NodeID: "other", State: StateAnswered},
		Dialog{CallID: "done", NodeID: "me", State: StateEnded},
	)
	phone := &fakePhone{}
	n, err := newService(store, phone, nil).Reap(context.Background(), func(id string) bool { return id == "running" })
	if err != nil || n != 1 {
		t.Fatalf("Reap() = %d, %v; want 1", n, err)
	}
	if len(phone.stateless) != 1 || phone.stateless[0] != "orphan" {
		t.Errorf("ended %v, want only the orphan", phone.stateless)
	}
}

type sipIndex map[string]string

func (x sipIndex) CallIDBySIP(_ context.Context, sipCallID string) (string, error) {
	if id, ok := x[sipCallID]; ok {
		return id, nil
	}
	return "", ErrNotFound
}

// A BYE for an answered dialog no process runs is the peer hanging up: recorded by remote at the
// BYE's arrival. Anything else is not ours to take (481).
func TestRemoteBye(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 3, 0, time.UTC)
	store := newMemStore(Dialog{CallID: "talking", NodeID: "dead", State: StateAnswered},
		Dialog{CallID: "ringing", NodeID: "dead", State: StateRinging})
	svc := NewService(Params{NodeID: "me", Store: store, Index: sipIndex{"s1": "talking", "s2": "ringing"},
		Phone: &fakePhone{}, Relay: &kicks{}, Log: testenv.Logger(t)})
	if svc.RemoteBye(context.Background(), "unknown", at, time.Time{}) || svc.RemoteBye(context.Background(), "s2", at, time.Time{}) {
		t.Error("RemoteBye() took a BYE for an unknown or unanswered dialog")
	}
	if !svc.RemoteBye(context.Background(), "s1", at, time.Time{}) {
		t.Fatal("RemoteBye() = false for an answered dialog")
	}
	testenv.Eventually(t, 5*time.Second, "the end stored", func() bool { return len(store.ended()) == 1 })
	if e := store.ended()[0]; e.By != callapi.HangupByRemote || !e.At.Equal(at) || e.SIPCode != 200 {
		t.Errorf("ended = %+v, want by remote at %s", e, at)
	}
	// Over UDP, a BYE that arrives 1.5 s after the node started listening, while the dead node
	// was last alive 2 s before it, is the third sending of a BYE sent 3.5 s before it arrived.
	beat := at.Add(-4 * time.Second)
	store = newMemStore(Dialog{CallID: "talking", NodeID: "dead", State: StateAnswered, TMAnswered: at.Add(-5 * time.Second)})
	store.alive = map[string]time.Time{"dead": beat}
	svc = NewService(Params{NodeID: "me", Store: store, Index: sipIndex{"s1": "talking"}, Phone: &fakePhone{}, Relay: &kicks{}, Log: testenv.Logger(t)})
	if !svc.RemoteBye(context.Background(), "s1", at, at.Add(-1500*time.Millisecond)) {
		t.Fatal("RemoteBye(udp) = false for an answered dialog")
	}
	testenv.Eventually(t, 5*time.Second, "the end stored", func() bool { return len(store.ended()) == 1 })
	if e := store.ended()[0]; e.By != callapi.HangupByRemote || !e.At.Equal(at.Add(-3500*time.Millisecond)) {
		t.Errorf("ended = %+v, want by remote at the BYE's first sending %s", e, at.Add(-3500*time.Millisecond))
	}
}

func TestResendOrigin(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tests := []struct {
		name                            string
		arrival, listening, alive, want float64
	}{
		{"first sending, long after the node listens", 8, 1.5, 0, 8},
		{"sent at 3 while nobody listened, resent at 3.5, 4.5: the node listens from 4", 4.5, 4, 1.5, 3},
		{"sent at 3, resent at 3.5, 4.5, 6.5: the node listens from 5", 6.5, 5, 1, 3},
		{"the dead node was alive until 4: no resend schedule fits, a first sending", 6.5, 5, 4, 6.5},
		{"several sendings fit: the latest one (sent at 3 or at 1: 3)", 4.5, 4, 0, 3},
		{"sent at 4.5 just before the node listened from 4.8, resent at 5", 5, 4.8, 1, 4.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ResendOrigin(at(tt.arrival), at(tt.listening), at(tt.alive)); !got.Equal(at(tt.want)) {
				t.Errorf("ResendOrigin() = %s, want %s", got.Sub(t0), at(tt.want).Sub(t0))
			}
		})
	}
}
