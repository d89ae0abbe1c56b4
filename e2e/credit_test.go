package e2e

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"voipbin/pkg/sqldb"
	"voipbin/pkg/testenv"
)

// Credit control with quota, through the real call, billing and rtc managers and the carrier
// simulator's never-ending number: billed per second at 1 000 micro-units a second, talk time
// granted in 2 s slices, the next slice asked for 1 s before the last runs out.
var creditEnv = map[string]string{
	"BILLING_RATE_TEL":    "60000",
	"BILLING_INCREMENT":   "1s",
	"BILLING_QUOTA_SLICE": "2s",
	"CALL_QUOTA_LEAD":     "1s",
	"CALL_QUOTA_INTERVAL": "100ms",
	// The test polls calls and the balance often; the API's rate limits are not under test.
	"RATE_LIMIT_CUSTOMER_RATE": "1000", "RATE_LIMIT_CUSTOMER_BURST": "1000",
	"RATE_LIMIT_IP_RATE": "1000", "RATE_LIMIT_IP_BURST": "1000",
}

const neverHangsUp = "+1200000000"

// binID is the SQL form of a UUID parameter as the services store it (BINARY(16)).
const binID = "UNHEX(REPLACE(?, '-', ''))"

func creditStack(t *testing.T, initialBalance string, extra map[string]string) (*Stack, *Client, *sql.DB) {
	t.Helper()
	env := map[string]string{"BILLING_INITIAL_BALANCE": initialBalance}
	for k, v := range creditEnv {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	stack := StartStack(t, env)
	admin := stack.NewClient().Login(stack.AdminUser, stack.AdminPass)
	_, cc := stack.NewCustomer(admin, strings.ToLower(testenv.Name("credit")))
	testenv.Eventually(t, 15*time.Second, "the billing account", func() bool {
		return len(accountOf(t, cc).ID) > 0
	})
	db, err := sqldb.Open(ctx(t), stack.Env["DATABASE_DSN"], testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return stack, cc, db
}

type account struct {
	ID        string `json:"id"`
	Balance   int64  `json:"balance"`
	Reserved  int64  `json:"reserved"`
	Available int64  `json:"available"`
}

func accountOf(t testing.TB, cc *Client) account {
	t.Helper()
	var out struct {
		Result []account `json:"result"`
	}
	cc.Must(200, "GET", "/v1.0/billing_accounts", nil).JSON(t, &out)
	if len(out.Result) == 0 {
		return account{}
	}
	return out.Result[0]
}

// watchBalance samples the account every 50 ms until stop is called (or the test ends), and
// returns the lowest balance and available amount it saw.
func watchBalance(t *testing.T, cc *Client) (stop func() (minBalance, minAvailable int64, samples int)) {
	done, finished := make(chan struct{}), make(chan struct{})
	var lowB, lowA int64 = 1 << 62, 1 << 62
	n := 0
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			r := cc.Do("GET", "/v1.0/billing_accounts", nil) // not Must: this is not the test's goroutine
			var out struct {
				Result []account `json:"result"`
			}
			if r.Status != 200 || json.Unmarshal(r.Body, &out) != nil || len(out.Result) == 0 {
				continue
			}
			a := out.Result[0]
			lowB, lowA, n = min(lowB, a.Balance), min(lowA, a.Available), n+1
		}
	}()
	var once sync.Once
	stop = func() (int64, int64, int) { once.Do(func() { close(done) }); <-finished; return lowB, lowA, n }
	t.Cleanup(func() { stop() })
	return stop
}

// callFacts is what the databases know of an ended call.
type callFacts struct {
	Call
	answered, hangup time.Time
	quota            int   // enforced at the rtc node, as the call manager recorded it
	granted          int   // granted by billing
	charged          int64 // the ledger's amount (negative)
	billable         int
}

// overrun is how long the call outlived the end of its last granted slice.
func (f callFacts) overrun() time.Duration {
	return f.hangup.Sub(f.answered.Add(time.Duration(f.granted) * time.Second))
}

// enforcedOverrun is how long the call outlived the quota its rtc node enforced (billing may have
// granted one slice more that never reached the node).
func (f callFacts) enforcedOverrun() time.Duration {
	return f.hangup.Sub(f.answered.Add(time.Duration(f.quota) * time.Second))
}

func factsOf(t *testing.T, db *sql.DB, c Call) callFacts {
	t.Helper()
	f := callFacts{Call: c}
	var answered sql.NullTime
	if err := db.QueryRow("SELECT tm_progressing, tm_hangup, quota FROM call_calls WHERE id = "+binID, c.ID).
		Scan(&answered, &f.hangup, &f.quota); err != nil {
		t.Fatalf("call %s: %v", c.ID, err)
	}
	f.answered = answered.Time
	if err := db.QueryRow("SELECT granted FROM billing_reservations WHERE call_id = "+binID, c.ID).Scan(&f.granted); err != nil {
		t.Fatalf("reservation of %s: %v", c.ID, err)
	}
	if err := db.QueryRow("SELECT amount, billable_seconds FROM billing_ledger WHERE call_id = "+binID, c.ID).Scan(&f.charged, &f.billable); err != nil {
		t.Fatalf("charge of %s: %v", c.ID, err)
	}
	return f
}

// ledgerSum is the sum of every ledger entry of the customer's account.
func ledgerSum(t *testing.T, db *sql.DB, accountID string) int64 {
	t.Helper()
	var sum int64
	if err := db.QueryRow("SELECT CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM billing_ledger WHERE account_id = "+binID, accountID).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	return sum
}

// waitCharged waits until every call has its ledger entry.
func waitCharged(t *testing.T, db *sql.DB, calls []Call) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "every call charged", func() bool {
		for _, c := range calls {
			var n int
			if err := db.QueryRow("SELECT COUNT(*) FROM billing_ledger WHERE call_id = "+binID, c.ID).Scan(&n); err != nil || n != 1 {
				return false
			}
		}
		return true
	})
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// A small balance and several parallel calls that never hang up: every call is ended with
// balance_exhausted within 2 s of its last granted slice, the balance never goes below zero at
// any moment, and it ends equal to the ledger. On a platform without credit control the calls
// run on until their maximum duration and the balance goes below zero.
func TestBalanceNeverGoesBelowZero(t *testing.T) {
	// 60 s of talk in all (one minute at the rate), 10 s a call. The numbers also let a platform
	// whose gate reserves a whole minute per call admit one of them, so that this test shows what
	// such a platform does with it: the call runs on past its money.
	const calls, initial = 6, 60_000
	stack, cc, db := creditStack(t, "60000", nil)
	acc := accountOf(t, cc)
	stop := watchBalance(t, cc)

	placed, others := placeNeverEnding(t, cc, calls)
	var refusals []string
	for _, r := range others {
		refusals = append(refusals, fmt.Sprintf("%d %s", r.Status, r.Body))
	}
	if len(refusals) > 0 {
		t.Errorf("%d of %d calls refused (each needs only its first 2 s slice reserved): %s", len(refusals), calls, refusals[0])
	}
	start := time.Now()
	ended := make([]Call, len(placed))
	deadline := start.Add(75 * time.Second) // 10 s of talk each; a call still up by then runs unpaid
	for {
		live := 0
		for i, c := range placed {
			cc.Must(200, "GET", "/v1.0/calls/"+c.ID, nil).JSON(t, &ended[i])
			if ended[i].Status != "hangup" {
				live++
			}
		}
		if live == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, c := range placed { // end them, so their charges show what they cost
				cc.Do("POST", "/v1.0/calls/"+c.ID+"/hangup", nil)
			}
			waitCharged(t, db, placed)
			a := accountOf(t, cc)
			low, lowAvail, _ := stop()
			t.Fatalf("%d of %d calls still up %s after they were placed, on a balance paying 60 s in all; hung up now, "+
				"the balance is %d (reserved %d, available %d, ledger %d), lowest seen before %d (available %d)",
				live, len(placed), time.Since(start).Round(time.Second), a.Balance, a.Reserved, a.Available,
				ledgerSum(t, db, acc.ID), low, lowAvail)
		}
		time.Sleep(200 * time.Millisecond) // polling the API, as WaitCall does
	}
	t.Logf("all %d calls ended %s after they were placed", calls, time.Since(start).Round(time.Millisecond))
	waitCharged(t, db, placed)
	lowBalance, lowAvailable, samples := stop()

	final := accountOf(t, cc)
	var totalGranted int // may exceed the balance: a call that ends early frees what it did not use
	var overruns []time.Duration
	for _, c := range ended {
		f := factsOf(t, db, c)
		totalGranted += f.granted
		overruns = append(overruns, f.overrun())
		t.Logf("call %s: %s; granted %d s (rtc enforced %d s), talked %s, ended %s after its last slice; charged %d for %d s",
			c.ID[:8], c.HangupReason, f.granted, f.quota, f.hangup.Sub(f.answered).Round(time.Millisecond),
			f.overrun().Round(time.Millisecond), -f.charged, f.billable)
		if c.HangupReason != "balance_exhausted" || c.HangupBy != "local" {
			t.Errorf("call %s = %s; want balance_exhausted by local", c.ID, c)
		}
		if f.overrun() > 2*time.Second {
			t.Errorf("call %s outlived its last granted slice by %s", c.ID, f.overrun())
		}
		if f.billable > f.granted || -f.charged > int64(f.granted)*1_000 {
			t.Errorf("call %s charged %d for %d s, more than its %d s granted", c.ID, -f.charged, f.billable, f.granted)
		}
	}
	sum := ledgerSum(t, db, acc.ID)
	t.Logf("balance: initial %d, lowest seen %d (available %d) in %d samples, final %d (reserved %d), ledger %d; %d s granted in all; overrun median %s, max %s",
		initial, lowBalance, lowAvailable, samples, final.Balance, final.Reserved, sum, totalGranted,
		median(overruns).Round(time.Millisecond), slicesMax(overruns).Round(time.Millisecond))
	if lowBalance < 0 || lowAvailable < 0 || final.Balance < 0 {
		t.Errorf("the balance went below zero: lowest %d, available %d, final %d", lowBalance, lowAvailable, final.Balance)
	}
	if final.Balance != sum || final.Reserved != 0 {
		t.Errorf("final balance %d, reserved %d; ledger %d", final.Balance, final.Reserved, sum)
	}
	if charged := initial - final.Balance; charged > initial {
		t.Errorf("%d charged, more than the %d balance", charged, initial)
	}
	if lines := stack.LogLines("call-manager", "quota extended"); len(lines) == 0 {
		t.Error("the call manager never extended a quota")
	}
}

// More parallel calls than the balance covers: the gate admits as many first slices as it pays
// for and refuses the rest with 402; the admitted calls get no second slice and end after their
// first, and the balance ends at zero, never below.
func TestMoreCallsThanTheBalanceCovers(t *testing.T) {
	const calls = 20
	_, cc, db := creditStack(t, "30000", nil) // 30 s: fifteen 2 s slices
	acc := accountOf(t, cc)
	stop := watchBalance(t, cc)
	placed, others := placeNeverEnding(t, cc, calls)
	refused := 0
	for _, r := range others {
		if r.Status == 402 {
			refused++
		} else {
			t.Errorf("POST /v1.0/calls = %d %s", r.Status, r.Body)
		}
	}
	if len(placed) != 15 || refused != 5 {
		t.Fatalf("%d calls admitted, %d refused; want 15 and 5", len(placed), refused)
	}
	var overruns []time.Duration
	for _, c := range placed {
		final := cc.WaitCall(c.ID, 30*time.Second, func(c Call) bool { return c.Status == "hangup" })
		if final.HangupReason != "balance_exhausted" {
			t.Errorf("call %s = %s; want balance_exhausted", c.ID, final)
		}
		waitCharged(t, db, []Call{final})
		f := factsOf(t, db, final)
		overruns = append(overruns, f.overrun())
		if f.granted != 2 || f.overrun() > 2*time.Second {
			t.Errorf("call %s: granted %d s, ended %s after it; want 2 s and within 2 s", c.ID, f.granted, f.overrun())
		}
	}
	low, lowAvail, samples := stop()
	a := accountOf(t, cc)
	sum := ledgerSum(t, db, acc.ID)
	t.Logf("%d calls: %d admitted, %d refused; overrun median %s, max %s; balance lowest seen %d (available %d) in %d samples, final %d, ledger %d",
		calls, len(placed), refused, median(overruns).Round(time.Millisecond), slicesMax(overruns).Round(time.Millisecond),
		low, lowAvail, samples, a.Balance, sum)
	if low < 0 || lowAvail < 0 || a.Balance != 0 || a.Balance != sum || a.Reserved != 0 {
		t.Errorf("balance lowest %d (available %d), final %d (reserved %d), ledger %d; want never below zero, ending at 0 = ledger",
			low, lowAvail, a.Balance, a.Reserved, sum)
	}
}

func slicesMax(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// Billing unreachable mid-call: the call keeps running only until the quota it was granted ends,
// then ends with balance_exhausted; once billing is back, it is charged for no more than that.
func TestQuotaWhenBillingIsUnreachable(t *testing.T) {
	stack, cc, db := creditStack(t, "1000000", map[string]string{"CALL_RPC_TIMEOUT": "2s"})
	acc := accountOf(t, cc)
	c := cc.PlaceCall(neverHangsUp)
	cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "progressing" })
	testenv.Eventually(t, 20*time.Second, "a second slice", func() bool {
		var q int
		return db.QueryRow("SELECT quota FROM call_calls WHERE id = "+binID, c.ID).Scan(&q) == nil && q >= 4
	})
	stack.Stop("billing-manager")
	stopped := time.Now()
	final := cc.WaitCall(c.ID, 30*time.Second, func(c Call) bool { return c.Status == "hangup" })
	t.Logf("billing stopped; the call ended %s later", time.Since(stopped).Round(time.Millisecond))
	stack.Restart("billing-manager")
	waitCharged(t, db, []Call{c})
	f := factsOf(t, db, final)
	t.Logf("call: %s; granted %d s (rtc enforced %d s), talked %s, ended %s after its last slice; charged %d for %d s",
		final.HangupReason, f.granted, f.quota, f.hangup.Sub(f.answered).Round(time.Millisecond), f.overrun().Round(time.Millisecond), -f.charged, f.billable)
	if final.HangupReason != "balance_exhausted" || final.HangupBy != "local" {
		t.Fatalf("call = %s; want balance_exhausted by local", final)
	}
	if f.overrun() > 2*time.Second {
		t.Errorf("the call outlived its last granted slice by %s", f.overrun())
	}
	if o := f.enforcedOverrun(); o < -500*time.Millisecond || o > 2*time.Second {
		t.Errorf("the call ended %s after the quota its node enforced; want at its end, within 2 s", o)
	}
	if f.billable > f.granted {
		t.Errorf("charged for %d s, more than the %d s granted", f.billable, f.granted)
	}
	a := accountOf(t, cc)
	if sum := ledgerSum(t, db, acc.ID); a.Balance != sum || a.Balance < 0 || a.Reserved != 0 {
		t.Errorf("balance %d reserved %d, ledger %d", a.Balance, a.Reserved, sum)
	}
}

// The call manager killed mid-call: the rtc node ends the call itself at the end of its quota, and
// the restarted call manager records it as balance_exhausted at that time. A call manager that
// restarts within a slice goes on renewing from the state it left in MySQL.
func TestQuotaWhenCallManagerDies(t *testing.T) {
	t.Run("dead for good: the node ends the call at its quota", func(t *testing.T) {
		stack, cc, db := creditStack(t, "1000000", nil)
		c := cc.PlaceCall(neverHangsUp)
		cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "progressing" })
		stack.Kill("call-manager")
		killed := time.Now()
		// Its rtc.ended waits in the call manager's queue; nothing renews meanwhile.
		time.Sleep(4 * time.Second) // the outage itself, not a wait for a condition
		stack.Restart("call-manager")
		final := cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "hangup" })
		waitCharged(t, db, []Call{c})
		f := factsOf(t, db, final)
		t.Logf("call manager killed; call ended %s after the kill by the rtc node: %s, granted %d s, talked %s, ended %s after its last slice",
			f.hangup.Sub(killed).Round(time.Millisecond), final.HangupReason, f.granted, f.hangup.Sub(f.answered).Round(time.Millisecond),
			f.overrun().Round(time.Millisecond))
		if final.HangupReason != "balance_exhausted" || f.overrun() > 2*time.Second || f.hangup.After(killed.Add(4*time.Second)) {
			t.Fatalf("call = %s, ended %s after its last slice; want balance_exhausted within 2 s", final, f.overrun())
		}
	})
	t.Run("restarted within a slice: renewals go on", func(t *testing.T) {
		// 5 s slices renewed 2 s ahead; 12 s of balance: the gate's 5 s, one renewal to 10 s, then
		// refused (the third slice needs 5 s more).
		stack, cc, db := creditStack(t, "12000", map[string]string{"BILLING_QUOTA_SLICE": "5s", "CALL_QUOTA_LEAD": "2s"})
		c := cc.PlaceCall(neverHangsUp)
		cc.WaitCall(c.ID, 20*time.Second, func(c Call) bool { return c.Status == "progressing" })
		stack.Kill("call-manager")
		stack.Restart("call-manager")
		final := cc.WaitCall(c.ID, 30*time.Second, func(c Call) bool { return c.Status == "hangup" })
		waitCharged(t, db, []Call{c})
		f := factsOf(t, db, final)
		t.Logf("call manager restarted after the answer: %s, granted %d s (rtc enforced %d s), talked %s, ended %s after its last slice",
			final.HangupReason, f.granted, f.quota, f.hangup.Sub(f.answered).Round(time.Millisecond), f.overrun().Round(time.Millisecond))
		if final.HangupReason != "balance_exhausted" || f.quota != 10 || f.overrun() > 2*time.Second || f.overrun() < -time.Second {
			t.Fatalf("call = %s, quota %d, ended %s after its last slice; want 10 s granted and used", final, f.quota, f.overrun())
		}
	})
}

// placeNeverEnding places n calls to a number that never hangs up, all at once, and returns the
// calls placed and the answers that placed none.
func placeNeverEnding(t *testing.T, cc *Client, n int) (placed []Call, others []Response) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := cc.Do("POST", "/v1.0/calls", map[string]any{
				"source":       map[string]string{"type": "tel", "target": "+15550001111"},
				"destinations": []map[string]string{{"type": "tel", "target": neverHangsUp}}})
			var out struct {
				Calls []Call `json:"calls"`
			}
			mu.Lock()
			defer mu.Unlock()
			if r.Status == 201 && json.Unmarshal(r.Body, &out) == nil && len(out.Calls) == 1 {
				placed = append(placed, out.Calls[0])
				return
			}
			others = append(others, r)
		}()
	}
	wg.Wait()
	return placed, others
}
