package call

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
)

// memStore keeps calls in memory: the Store and RenewalStore the renewer needs.
type memStore struct {
	mu    sync.Mutex
	calls map[string]*Call
}

func (m *memStore) Create(context.Context, []*Call) ([]Event, error) { return nil, nil }
func (m *memStore) List(context.Context, Filter) ([]*Call, error)    { return nil, nil }

func (m *memStore) Get(_ context.Context, id string) (*Call, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.calls[id]
	if !ok {
		return nil, ErrNotFound
	}
	cp := *c
	return &cp, nil
}

func (m *memStore) Update(_ context.Context, id string, fn func(*Call) error) (*Call, []Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.calls[id]
	if !ok {
		return nil, nil, ErrNotFound
	}
	cp := *cur
	if err := fn(&cp); err != nil {
		if err == ErrUnchanged {
			return cur, nil, nil
		}
		return nil, nil, err
	}
	evs := cp.TakeEvents()
	m.calls[id] = &cp
	return &cp, evs, nil
}

func (m *memStore) ClaimRenewals(_ context.Context, now, lease time.Time, _ int) ([]*Call, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Call
	for _, c := range m.calls {
		if c.TMRenew != nil && !c.TMRenew.After(now) {
			l := lease
			c.TMRenew = &l
			cp := *c
			out = append(out, &cp)
		}
	}
	return out, nil
}

func (m *memStore) SetRenewal(_ context.Context, id string, at *time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.calls[id]; c != nil && c.Live() {
		c.TMRenew = at
	}
	return nil
}

// fakeCredit answers each Extend with the next scripted answer (err, or a grant of +slice).
type fakeCredit struct {
	answers []error // nil: grant
	asked   []int
}

func (f *fakeCredit) Extend(_ context.Context, _ string, req billingapi.ExtendRequest) (billingapi.ExtendResponse, error) {
	f.asked = append(f.asked, req.Quota)
	err := f.answers[0]
	if len(f.answers) > 1 {
		f.answers = f.answers[1:]
	}
	if err != nil {
		return billingapi.ExtendResponse{}, err
	}
	return billingapi.ExtendResponse{Quota: req.Quota + 60}, nil
}

// fakeEnforcer records what the node is told; extendErr fails Extend while set.
type fakeEnforcer struct {
	extendErr error
	extended  []int
	hangups   []string
}

func (f *fakeEnforcer) Extend(_ context.Context, _, _ string, quota int) error {
	if f.extendErr != nil {
		return f.extendErr
	}
	f.extended = append(f.extended, quota)
	return nil
}

func (f *fakeEnforcer) HangupReason(_ context.Context, _, _, reason string) error {
	f.hangups = append(f.hangups, reason)
	return nil
}

type nopCache struct{}

func (nopCache) Get(context.Context, string) (*Call, bool) { return nil, false }
func (nopCache) Set(context.Context, *Call)                {}

type nopKick struct{}

func (nopKick) Kick() {}

// The renewer's steps against billing and the node, at the times that matter: the renewal lead,
// the quota's end, and its grace.
func TestRenewer(t *testing.T) {
	answered := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	refused := apierr.New(apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance, "no")
	unreachable := apierr.New(apierr.Unavailable, apierr.ReasonRequestTimeout, "no answer")
	released := apierr.New(apierr.FailedPrecondition, billingapi.ErrReasonReservationReleased, "ended")
	gone := apierr.New(apierr.NotFound, rtcapi.ErrReasonDialogNotFound, "ended")
	type pass struct {
		at        time.Duration // after the answer
		extendErr error         // the node's answer to Extend
	}
	tests := []struct {
		name         string
		billing      []error
		passes       []pass
		wantAsked    []int
		wantExtended []int
		wantHangups  int
		wantQuota    int
		wantRenew    time.Duration // after the answer; -1: none
	}{
		{name: "granted: the node first, then the row", billing: []error{nil}, passes: []pass{{at: 50 * time.Second}},
			wantAsked: []int{60}, wantExtended: []int{120}, wantQuota: 120, wantRenew: 110 * time.Second},
		{name: "refused with quota left: asked again a second later, the node untouched", billing: []error{refused},
			passes: []pass{{at: 50 * time.Second}}, wantAsked: []int{60}, wantQuota: 60, wantRenew: 51 * time.Second},
		{name: "a top-up before the end: the call goes on", billing: []error{refused, nil},
			passes: []pass{{at: 50 * time.Second}, {at: 51 * time.Second}}, wantAsked: []int{60, 60}, wantExtended: []int{120},
			wantQuota: 120, wantRenew: 110 * time.Second},
		{name: "billing unreachable to the end: the node is asked to end the call past the grace",
			billing: []error{unreachable}, passes: []pass{{at: 50 * time.Second}, {at: 59500 * time.Millisecond}, {at: 61 * time.Second}},
			wantAsked: []int{60, 60}, wantHangups: 1, wantQuota: 60, wantRenew: -1},
		{name: "the node missed the new quota: retried, billing answers the same grant", billing: []error{nil},
			passes:    []pass{{at: 50 * time.Second, extendErr: unreachable}, {at: 51 * time.Second}},
			wantAsked: []int{60, 60}, wantExtended: []int{120}, wantQuota: 120, wantRenew: 110 * time.Second},
		{name: "the call ended at billing: no more renewals", billing: []error{released}, passes: []pass{{at: 50 * time.Second}},
			wantAsked: []int{60}, wantQuota: 60, wantRenew: -1},
		{name: "the dialog ended on the node: no more renewals", billing: []error{nil},
			passes: []pass{{at: 50 * time.Second, extendErr: gone}}, wantAsked: []int{60}, wantQuota: 60, wantRenew: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := answered
			c := New(NewParams{ID: "call", CustomerID: "cus", Deadline: answered.Add(2 * time.Hour), FirstCheck: answered.Add(time.Hour)}, answered)
			c.NodeID, c.Quota = "node", 60
			c.Answer(answered, answered)
			renew := RenewAt(answered, 60, 60, 10*time.Second)
			c.TMRenew = &renew
			store := &memStore{calls: map[string]*Call{"call": c}}
			credit, node := &fakeCredit{answers: tt.billing}, &fakeEnforcer{}
			svc := NewService(Deps{Store: store, Renewals: store, Cache: nopCache{}, Credit: credit, Enforcer: node,
				Relay: nopKick{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return now },
				Settings: Settings{RPCTimeout: time.Second, QuotaLead: 10 * time.Second, QuotaInterval: time.Second}})
			for _, p := range tt.passes {
				now = answered.Add(p.at)
				node.extendErr = p.extendErr
				if err := svc.Renew(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			got, _ := store.Get(context.Background(), "call")
			if !equalInts(credit.asked, tt.wantAsked) || !equalInts(node.extended, tt.wantExtended) || len(node.hangups) != tt.wantHangups {
				t.Fatalf("billing asked %v, node extended %v, hangups %v; want %v, %v, %d", credit.asked, node.extended, node.hangups,
					tt.wantAsked, tt.wantExtended, tt.wantHangups)
			}
			for _, r := range node.hangups {
				if r != callapi.ReasonBalanceExhausted {
					t.Fatalf("hang-up reason %q", r)
				}
			}
			if got.Quota != tt.wantQuota {
				t.Fatalf("quota %d, want %d", got.Quota, tt.wantQuota)
			}
			switch {
			case tt.wantRenew < 0 && got.TMRenew != nil:
				t.Fatalf("next renewal %s after the answer, want none", got.TMRenew.Sub(answered))
			case tt.wantRenew >= 0 && (got.TMRenew == nil || !got.TMRenew.Equal(answered.Add(tt.wantRenew))):
				t.Fatalf("next renewal %v, want %s after the answer", got.TMRenew, tt.wantRenew)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
