package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

// The fault test (make fault): the whole stack on a MariaDB, a RabbitMQ node and a Redis of its
// own, under load from clients that retry with their Idempotency-Key, while each manager, then
// RabbitMQ, MariaDB and Redis, is SIGKILLed and started again. Afterwards it checks what the
// platform promises whatever fails: every key → one call; every call ended with one call.ended;
// webhook events complete and in order; balance = ledger = durations × rate. It runs only with
// VOIPBIN_FAULT=1; the settings are read from VOIPBIN_FAULT_* (faultConfig).

// faultConfig is the test's settings, from the environment.
type faultConfig struct {
	Budget   time.Duration // from the stack being up to the verdict (VOIPBIN_FAULT_BUDGET, 10m)
	Rate     float64       // logical call requests per second (VOIPBIN_FAULT_RATE, 8)
	Number   string        // the carrier simulator number called (VOIPBIN_FAULT_NUMBER, +1200000003)
	HoldSecs int           // how long the carrier keeps each call (from the number)
	Warmup   time.Duration // load before the first fault (VOIPBIN_FAULT_WARMUP, 10s)
	Down     time.Duration // how long a killed part stays down (VOIPBIN_FAULT_DOWN, 3s)
	Pause    time.Duration // load after a part healed, before the next fault (VOIPBIN_FAULT_PAUSE, 15s)
	RetryFor time.Duration // how long a client retries one request (VOIPBIN_FAULT_RETRY_FOR, 90s)
	Quiesce  time.Duration // longest wait for the platform to settle after the load (VOIPBIN_FAULT_QUIESCE, 4m)
	Faults   []string      // what is killed, in order (VOIPBIN_FAULT_FAULTS)
	Keep     bool          // keep the temporary directory with every log (VOIPBIN_FAULT_KEEP=1)
	Rate60   int64         // BILLING_RATE_TEL of the stack, micro-units a minute
	Initial  int64         // BILLING_INITIAL_BALANCE of the stack
}

var allFaults = []string{"api", "call", "billing", "rtc", "webhook", "rabbitmq", "mariadb", "redis"}

func loadFaultConfig(t *testing.T) faultConfig {
	t.Helper()
	c := faultConfig{Rate60: 20_000, Initial: 100_000_000_000}
	var problems []string
	dur := func(name string, def time.Duration) time.Duration {
		v := os.Getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			problems = append(problems, fmt.Sprintf("%s=%q: not a duration like 30s", name, v))
		}
		return d
	}
	c.Budget = dur("VOIPBIN_FAULT_BUDGET", 10*time.Minute)
	c.Warmup = dur("VOIPBIN_FAULT_WARMUP", 10*time.Second)
	c.Down = dur("VOIPBIN_FAULT_DOWN", 3*time.Second)
	c.Pause = dur("VOIPBIN_FAULT_PAUSE", 15*time.Second)
	c.RetryFor = dur("VOIPBIN_FAULT_RETRY_FOR", 90*time.Second)
	c.Quiesce = dur("VOIPBIN_FAULT_QUIESCE", 4*time.Minute)
	c.Rate = 8
	if v := os.Getenv("VOIPBIN_FAULT_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 || r > 200 {
			problems = append(problems, fmt.Sprintf("VOIPBIN_FAULT_RATE=%q: calls per second in (0, 200]", v))
		}
		c.Rate = r
	}
	c.Number = "+1200000003"
	if v := os.Getenv("VOIPBIN_FAULT_NUMBER"); v != "" {
		c.Number = v
	}
	// +1200NNNNNN answers and hangs up after N seconds (the carrier simulator's numbering).
	if rest, ok := strings.CutPrefix(c.Number, "+1200"); !ok || len(rest) != 6 {
		problems = append(problems, fmt.Sprintf("VOIPBIN_FAULT_NUMBER=%q: want +1200NNNNNN (answer, hang up after N s)", c.Number))
	} else if n, err := strconv.Atoi(rest); err != nil || n < 1 || n > 60 {
		problems = append(problems, fmt.Sprintf("VOIPBIN_FAULT_NUMBER=%q: hold of 1..60 s", c.Number))
	} else {
		c.HoldSecs = n
	}
	c.Faults = allFaults
	if v := os.Getenv("VOIPBIN_FAULT_FAULTS"); v != "" {
		c.Faults = nil
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if !contains(allFaults, f) {
				problems = append(problems, fmt.Sprintf("VOIPBIN_FAULT_FAULTS: unknown %q (any of %s)", f, strings.Join(allFaults, ",")))
			}
			c.Faults = append(c.Faults, f)
		}
	}
	c.Keep = os.Getenv("VOIPBIN_FAULT_KEEP") == "1"
	if len(problems) > 0 {
		t.Fatalf("fault test settings:\n  %s", strings.Join(problems, "\n  "))
	}
	return c
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// heal is how one fault went.
type heal struct {
	Fault   string
	Down    time.Duration // kill → started again
	Ready   time.Duration // started again → every manager's /readyz 200 (−1: never)
	Serving time.Duration // started again → first 201 of a request sent after that (−1: never)
	Exits   []string      // managers that exited on their own meanwhile
}

// faultRun is the state of one run, shared by its parts.
type faultRun struct {
	t        *testing.T
	cfg      faultConfig
	begin    time.Time
	stack    *Stack
	depsMu   sync.Mutex
	deps     map[string]*Daemon
	stackRef atomic.Pointer[Stack] // for the signal handler
	stopping atomic.Bool           // the signal handler is ending everything
	db       *sql.DB
	phase    *phaseClock
	load     *load
	hook     *hookReceiver
	ws       *wsSubscriber
	heals    []heal
	killing  atomic.Value // the manager being killed and restarted by inject, not to be restarted by watchExits
	exitsMu  sync.Mutex
	exits    []string
}

func (r *faultRun) logf(format string, args ...any) {
	fmt.Printf("[fault %6.1fs] %s\n", time.Since(r.begin).Seconds(), fmt.Sprintf(format, args...))
}

var managers = []string{"api-manager", "call-manager", "billing-manager", "rtc-manager", "webhook-manager"}

func TestFault(t *testing.T) {
	if os.Getenv("VOIPBIN_FAULT") != "1" {
		t.Skip("the fault test runs with VOIPBIN_FAULT=1 (make fault); it takes about 10 minutes")
	}
	cfg := loadFaultConfig(t)
	r := &faultRun{t: t, cfg: cfg, begin: time.Now(), phase: &phaseClock{}, deps: map[string]*Daemon{}}
	r.phase.set("setup")

	dir, err := os.MkdirTemp("", "vbfault")
	if err != nil {
		t.Fatal(err)
	}
	removeDir := func() {
		if cfg.Keep {
			r.logf("kept %s (VOIPBIN_FAULT_KEEP=1)", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}
	t.Cleanup(removeDir) // registered first, so it runs after every process is gone
	// Ctrl-C or a kill of go test ends the test process without its cleanups: end what it
	// started (the children also get SIGKILL when this process dies) and remove the directory.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	t.Cleanup(func() { signal.Stop(sigs) })
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		r.stopping.Store(true)
		r.logf("%s: killing everything the test started", sig)
		if st := r.stackRef.Load(); st != nil {
			st.KillAll()
		}
		for _, d := range r.daemons() {
			d.Kill()
		}
		removeDir()
		if binDir != "" {
			_ = os.RemoveAll(binDir)
		}
		os.Exit(2)
	}()
	r.logf("settings: %.1f calls/s to %s (hangs up after %d s), faults %s, down %s, pause %s, budget %s, dir %s",
		cfg.Rate, cfg.Number, cfg.HoldSecs, strings.Join(cfg.Faults, ","), cfg.Down, cfg.Pause, cfg.Budget, dir)

	// Dependencies of our own, then the stack on them.
	maria, dsn := OwnMariaDB(t, dir)
	r.addDaemon(maria)
	r.logf("mariadb up on %s", maria.Address)
	rabbit, amqpURL := OwnRabbitMQ(t, dir)
	r.addDaemon(rabbit)
	r.logf("rabbitmq node up on %s", rabbit.Address)
	redis := OwnRedis(t, dir)
	r.addDaemon(redis)
	r.logf("redis up on %s", redis.Address)
	r.depsMu.Lock()
	r.deps = map[string]*Daemon{"mariadb": maria, "rabbitmq": rabbit, "redis": redis}
	r.depsMu.Unlock()
	r.db, err = sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.db.Close() })

	logDir := dir + "/logs"
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.logf("building the binaries and starting the stack")
	r.stack = StartStackOn(t, StackOptions{
		Deps:   Deps{DatabaseDSN: dsn, RabbitURL: amqpURL, RedisAddress: redis.Address},
		LogDir: logDir,
		Env: map[string]string{
			"BILLING_INITIAL_BALANCE":   strconv.FormatInt(cfg.Initial, 10),
			"BILLING_RATE_TEL":          strconv.FormatInt(cfg.Rate60, 10),
			"RATE_LIMIT_IP_RATE":        "100000",
			"RATE_LIMIT_IP_BURST":       "100000",
			"RATE_LIMIT_CUSTOMER_RATE":  "100000",
			"RATE_LIMIT_CUSTOMER_BURST": "100000",
			"BCRYPT_COST":               "4",
		},
	})
	r.stackRef.Store(r.stack)
	r.logf("stack up: api %s, sip %s, carrier %s; the %s budget starts now", r.stack.API, r.stack.SIPAddress, r.stack.CarrierAddr, cfg.Budget)
	hardStop := time.Now().Add(cfg.Budget)

	// The customer, its webhook and its WebSocket.
	admin := r.stack.NewClient().Login(r.stack.AdminUser, r.stack.AdminPass)
	customer, cc := r.stack.NewCustomer(admin, strings.ToLower(strings.ReplaceAll(testenv.Name("fault"), "_", "")))
	testenv.Eventually(t, 30*time.Second, "the billing account", func() bool {
		return strings.Contains(string(cc.Must(200, "GET", "/v1.0/billing_accounts", nil).Body), "balance")
	})
	r.hook, err = startHookReceiver()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.hook.close)
	var hook struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	cc.Must(201, "POST", "/v1.0/webhooks", map[string]any{"name": "fault", "uri": r.hook.URL, "method": "POST",
		"event_types": []string{"call.*"}}).JSON(t, &hook)
	r.hook.secret.Store(hook.Secret)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bg sync.WaitGroup
	t.Cleanup(bg.Wait)
	t.Cleanup(cancel)
	r.ws = &wsSubscriber{url: "ws" + strings.TrimPrefix(r.stack.API, "http") + "/v1.0/ws", token: cc.Token,
		topic: "customer_id:" + customer.ID + ":call:*"}
	bg.Add(2)
	go func() { defer bg.Done(); r.ws.run(ctx) }()
	go func() { defer bg.Done(); r.watchExits(ctx) }()

	// Load, faults, quiescence.
	r.load = newLoad(ctx, loadConfig{API: r.stack.API, Token: cc.Token, Number: cfg.Number, Rate: cfg.Rate, RetryFor: cfg.RetryFor}, r.phase)
	loadCtx, stopLoad := context.WithCancel(ctx)
	bg.Add(1)
	go func() { defer bg.Done(); r.load.run(loadCtx) }()
	bg.Add(1)
	go func() { defer bg.Done(); r.progress(loadCtx) }()
	r.phase.set("warmup")
	r.logf("load: %.1f calls/s; warmup %s", cfg.Rate, cfg.Warmup)
	time.Sleep(cfg.Warmup)

	// Leave room after the faults for the clients to finish and the platform to settle.
	faultsEnd := hardStop.Add(-cfg.RetryFor / 2).Add(-cfg.Quiesce / 2)
	for _, f := range cfg.Faults {
		if time.Now().After(faultsEnd) {
			r.logf("budget: skipping %s and the faults after it", f)
			break
		}
		r.inject(f)
		r.phase.set("after " + f)
		time.Sleep(cfg.Pause)
	}
	stopLoad()
	r.phase.set("drain")
	r.logf("load stopped after %d logical requests; waiting for their answers (up to %s)", len(r.load.snapshot()), cfg.RetryFor)
	if !r.load.drain(cfg.RetryFor + 30*time.Second) {
		r.logf("some requests still had no answer")
	}
	r.phase.set("quiesce")
	r.quiesce(min(cfg.Quiesce, time.Until(hardStop.Add(-30*time.Second))))

	// Verdict.
	rep := r.check(cc)
	rep.print(r)
	if rep.failed() {
		t.Fail()
	}
}

func (r *faultRun) addDaemon(d *Daemon) {
	r.depsMu.Lock()
	defer r.depsMu.Unlock()
	r.deps[d.Name] = d
}

func (r *faultRun) daemons() []*Daemon {
	r.depsMu.Lock()
	defer r.depsMu.Unlock()
	out := make([]*Daemon, 0, len(r.deps))
	for _, d := range r.deps {
		out = append(out, d)
	}
	return out
}

// watchExits notices managers that exit on their own (not killed by us) and starts them again,
// as a supervisor would, so one crash does not end the run; each is reported.
func (r *faultRun) watchExits(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		for _, m := range append([]string{"carrier-sim"}, managers...) {
			if r.killing.Load() == m || !r.stack.Exited(m) || ctx.Err() != nil || r.stopping.Load() {
				continue
			}
			code := r.stack.ExitCode(m)
			msg := fmt.Sprintf("%s exited on its own (status %d) during %q", m, code, r.phase.get())
			r.logf("%s; starting it again", msg)
			r.exitsMu.Lock()
			r.exits = append(r.exits, msg)
			r.exitsMu.Unlock()
			if err := r.stack.StartAgain(m); err != nil {
				r.logf("restart %s: %v", m, err)
			}
		}
	}
}

// inject kills one part, keeps it down for cfg.Down, starts it again and measures the healing.
func (r *faultRun) inject(f string) {
	h := heal{Fault: f, Ready: -1, Serving: -1}
	r.phase.set(f + " down")
	killed := time.Now()
	r.depsMu.Lock()
	d := r.deps[f]
	r.depsMu.Unlock()
	if d != nil {
		r.logf("SIGKILL %s (own instance on %s)", f, d.Address)
		d.Kill()
		time.Sleep(r.cfg.Down)
		r.phase.set(f + " healing")
		if err := d.Start(); err != nil {
			r.t.Fatalf("start %s again: %v", f, err)
		}
		if err := d.WaitReady(2 * time.Minute); err != nil {
			r.t.Fatalf("%s did not come back: %v", f, err)
		}
	} else {
		name := f + "-manager"
		r.logf("SIGKILL %s", name)
		r.killing.Store(name)
		r.stack.Kill(name)
		time.Sleep(r.cfg.Down)
		r.phase.set(f + " healing")
		if err := r.stack.StartAgain(name); err != nil {
			r.t.Fatalf("start %s again: %v", name, err)
		}
		r.killing.Store("")
	}
	restarted := time.Now()
	h.Down = restarted.Sub(killed)
	deadline := restarted.Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if h.Ready < 0 && r.allReady() {
			h.Ready = time.Since(restarted)
		}
		if h.Serving < 0 && r.load.firstSuccessAfter(restarted) {
			h.Serving = time.Since(restarted)
		}
		if h.Ready >= 0 && h.Serving >= 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.heals = append(r.heals, h)
	r.logf("%s back: down %s, every /readyz 200 after %s, first call placed after %s",
		f, h.Down.Round(time.Millisecond), fmtDur(h.Ready), fmtDur(h.Serving))
}

func fmtDur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(10 * time.Millisecond).String()
}

func (r *faultRun) allReady() bool {
	for _, m := range managers {
		if !r.stack.Ready(m) {
			return false
		}
	}
	return true
}

// progress prints a line every 10 s while the load runs.
func (r *faultRun) progress(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
		reqs := r.load.snapshot()
		counts := map[string]int{}
		for _, q := range reqs {
			o := q.Outcome
			if o == "" {
				o = "pending"
			}
			counts[o]++
		}
		evs, notices, _, _ := r.ws.snapshot()
		r.logf("[%s] requests %d (created %d, pending %d, refused %d, undecided %d); webhook deliveries %d; ws events %d, ws notices %d",
			r.phase.get(), len(reqs), counts["created"], counts["pending"], counts["refused"], counts["undecided"],
			len(r.hook.snapshot()), len(evs), len(notices))
	}
}

// quiesce waits until the platform has settled: every call hung up, every outbox row published,
// every reservation released, every call event delivered to the webhook; or until timeout.
func (r *faultRun) quiesce(timeout time.Duration) {
	r.logf("waiting up to %s for the platform to settle", timeout.Round(time.Second))
	start := time.Now()
	deadline := start.Add(timeout)
	last := time.Time{}
	var prev settleState
	sameSince := time.Now()
	for {
		st, err := r.settled()
		if err == nil && st.done() {
			r.logf("settled after %s: %s", time.Since(start).Round(time.Second), st)
			return
		}
		if st != prev {
			prev, sameSince = st, time.Now()
		}
		// Once every call is over, a state that no longer changes is as settled as it gets (a
		// reservation nobody releases waits for its expiry, hours away).
		if err == nil && st.Live == 0 && st.UnsentCall == 0 && time.Since(sameSince) >= 30*time.Second {
			r.logf("stable for 30 s after %s: %s", time.Since(start).Round(time.Second), st)
			return
		}
		if time.Now().After(deadline) {
			r.logf("not settled after %s: %s (err %v); checking anyway", timeout.Round(time.Second), st, err)
			return
		}
		if time.Since(last) >= 10*time.Second {
			r.logf("settling: %s (err %v)", st, err)
			last = time.Now()
		}
		time.Sleep(2 * time.Second)
	}
}

type settleState struct {
	Live, UnsentCall, UnsentBilling, ActiveReservations, CallEvents, Delivered int
}

func (s settleState) done() bool {
	return s.Live == 0 && s.UnsentCall == 0 && s.UnsentBilling == 0 && s.ActiveReservations == 0 && s.Delivered >= s.CallEvents
}

func (s settleState) String() string {
	return fmt.Sprintf("calls not hung up %d, unpublished call events %d, unpublished billing events %d, active reservations %d, call events delivered to the webhook %d of %d",
		s.Live, s.UnsentCall, s.UnsentBilling, s.ActiveReservations, s.Delivered, s.CallEvents)
}

func (r *faultRun) settled() (settleState, error) {
	var s settleState
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := func(dst *int, query string) error {
		return r.db.QueryRowContext(ctx, query).Scan(dst)
	}
	for _, c := range []struct {
		dst *int
		sql string
	}{
		{&s.Live, "SELECT COUNT(*) FROM call_calls WHERE status <> 'hangup'"},
		{&s.UnsentCall, "SELECT COUNT(*) FROM call_outbox WHERE tm_sent IS NULL"},
		{&s.UnsentBilling, "SELECT COUNT(*) FROM billing_outbox WHERE tm_sent IS NULL"},
		{&s.ActiveReservations, "SELECT COUNT(*) FROM billing_reservations WHERE tm_release IS NULL AND account_id IS NOT NULL"},
		{&s.CallEvents, "SELECT COUNT(*) FROM call_outbox WHERE exchange = 'call.events'"},
	} {
		if err := q(c.dst, c.sql); err != nil {
			return s, err
		}
	}
	seen := map[string]bool{}
	for _, d := range r.hook.snapshot() {
		seen[d.EventID] = true
	}
	s.Delivered = len(seen)
	return s, nil
}
