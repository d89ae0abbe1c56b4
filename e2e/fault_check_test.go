package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"sort"
	"strings"
	"time"

	"voipbin/pkg/billingapi"
)

// faultCall is what the checks read of a call, from the API.
type faultCall struct {
	ID            string            `json:"id"`
	Status        string            `json:"status"`
	HangupBy      string            `json:"hangup_by"`
	HangupReason  string            `json:"hangup_reason"`
	SIPCode       int               `json:"sip_code"`
	Duration      int               `json:"duration"`
	Metadata      map[string]string `json:"metadata"`
	TMCreate      time.Time         `json:"tm_create"`
	TMProgressing *time.Time        `json:"tm_progressing"`
	TMHangup      *time.Time        `json:"tm_hangup"`
}

// outboxEvent is a call event as the call manager committed it (its outbox, in our own MariaDB).
type outboxEvent struct {
	EventID   string    `json:"event_id"`
	EventType string    `json:"event_type"`
	Timestamp time.Time `json:"timestamp"`
	CallID    string    `json:"resource_id"`
	Sequence  int64     `json:"sequence"`
}

// check is one invariant and what violates it.
type check struct {
	Name       string
	Violations []string       // "<id>: what is wrong"
	Evidence   []string       // ids to look up in the services' logs
	ByPhase    map[string]int // violations by the phase they arose in, when known
	ByKind     map[string]int // violations by what they were (an answer and its message), when useful
}

func (c *check) add(evidenceID, format string, args ...any) {
	c.Violations = append(c.Violations, fmt.Sprintf(format, args...))
	if evidenceID != "" {
		c.Evidence = append(c.Evidence, evidenceID)
	}
}

// addIn is add for a violation that arose during phase.
// addKind is addIn for a violation of a kind worth counting.
func (c *check) addKind(phase, kind, evidenceID, format string, args ...any) {
	if c.ByKind == nil {
		c.ByKind = map[string]int{}
	}
	c.ByKind[kind]++
	c.addIn(phase, evidenceID, format, args...)
}

func (c *check) addIn(phase, evidenceID, format string, args ...any) {
	if c.ByPhase == nil {
		c.ByPhase = map[string]int{}
	}
	c.ByPhase[phase]++
	c.add(evidenceID, format, args...)
}

type faultReport struct {
	figures []string
	checks  []*check
}

func (rep *faultReport) figure(format string, args ...any) {
	rep.figures = append(rep.figures, fmt.Sprintf(format, args...))
}

func (rep *faultReport) failed() bool {
	for _, c := range rep.checks {
		if len(c.Violations) > 0 {
			return true
		}
	}
	return false
}

// faultData is everything the checks read: what the customer saw (the clients' answers, the API,
// the webhook, the WebSocket) and what the services committed (read from our own MariaDB) or did
// (the carrier simulator's log).
type faultData struct {
	reqs       []logical
	calls      []faultCall
	events     []outboxEvent
	unsent     int
	ledger     []billingapi.Billing
	account    billingapi.Account
	deliveries []delivery
	wsEvents   []wsEvent
	wsNotices  []wsNotice
	wsDown     [][2]time.Time
	wsOpens    int
	sipIDs     map[string]string // call id → SIP Call-ID
	carrier    map[string]string // SIP Call-ID → how the carrier's side ended
}

// check gathers the data, holds it against the invariants and adds the figures of the logs.
func (r *faultRun) check(cc *Client) *faultReport {
	d := r.gather(cc)
	rep := r.evaluate(d)
	r.logFigures(rep)
	return rep
}

func (r *faultRun) gather(cc *Client) faultData {
	var d faultData
	var err error
	d.reqs = r.load.snapshot()
	if d.calls, err = r.listCalls(cc); err != nil {
		r.t.Fatalf("list calls: %v", err)
	}
	if d.events, d.unsent, err = r.outboxEvents(); err != nil {
		r.t.Fatalf("read call_outbox: %v", err)
	}
	if d.ledger, d.account, err = r.ledger(cc); err != nil {
		r.t.Fatalf("read the ledger: %v", err)
	}
	if d.sipIDs, err = r.sipCallIDs(); err != nil {
		r.t.Fatalf("read call_calls: %v", err)
	}
	d.carrier = r.carrierOutcomes()
	d.deliveries = r.hook.snapshot()
	d.wsEvents, d.wsNotices, d.wsDown, d.wsOpens = r.ws.snapshot()
	return d
}

// evaluate holds the data against the invariants; it reads nothing else but the run's settings,
// phases and heal times.
func (r *faultRun) evaluate(d faultData) *faultReport {
	rep := &faultReport{}
	reqs, calls, events, unsent, ledger, account := d.reqs, d.calls, d.events, d.unsent, d.ledger, d.account
	deliveries, wsEvents, wsNotices, wsDown, wsOpens := d.deliveries, d.wsEvents, d.wsNotices, d.wsDown, d.wsOpens

	callByID := map[string]faultCall{}
	callsByKey := map[string][]string{}
	for _, c := range calls {
		callByID[c.ID] = c
		callsByKey[c.Metadata["fault_key"]] = append(callsByKey[c.Metadata["fault_key"]], c.ID)
	}
	eventsByCall := map[string][]outboxEvent{}
	eventByID := map[string]outboxEvent{}
	for _, e := range events {
		eventsByCall[e.CallID] = append(eventsByCall[e.CallID], e)
		eventByID[e.EventID] = e
	}

	// ---- figures
	outcomes := map[string]int{}
	attempts := 0
	statusByPhase := map[string]map[string]int{}
	var answerTimes []time.Duration
	for _, q := range reqs {
		o := q.Outcome
		if o == "" {
			o = "pending"
		}
		outcomes[o]++
		attempts += len(q.Attempts)
		if o == "created" {
			answerTimes = append(answerTimes, q.End.Sub(q.Start))
		}
		for _, a := range q.Attempts {
			if statusByPhase[a.Phase] == nil {
				statusByPhase[a.Phase] = map[string]int{}
			}
			statusByPhase[a.Phase][statusLabel(a)]++
		}
	}
	rep.figure("run: %s (commit %s); %.1f calls/s to %s; faults %s", time.Since(r.begin).Round(time.Second), commitOf(), r.cfg.Rate, r.cfg.Number, strings.Join(r.cfg.Faults, ", "))
	rep.figure("keys (logical requests): %d — created %d, refused %d, undecided %d, pending %d; HTTP attempts %d; time to a 201: median %s, p99 %s, max %s",
		len(reqs), outcomes["created"], outcomes["refused"], outcomes["undecided"], outcomes["pending"], attempts,
		quantile(answerTimes, 0.5), quantile(answerTimes, 0.99), quantile(answerTimes, 1))
	for _, ph := range r.phase.all() {
		if statusByPhase[ph] != nil {
			rep.figure("  answers during %-18s %s", ph+":", formatCounts(statusByPhase[ph]))
			delete(statusByPhase, ph)
		}
	}
	outcomeCounts := map[string]int{}
	for _, c := range calls {
		outcomeCounts[fmt.Sprintf("%s/%s/%s dur=%d", c.Status, c.HangupReason, c.HangupBy, c.Duration)]++
	}
	rep.figure("calls: %d; outcomes (status/reason/by duration): %s", len(calls), formatCounts(outcomeCounts))
	typeCounts := map[string]int{}
	for _, e := range events {
		typeCounts[e.EventType]++
	}
	rep.figure("call events committed: %d (%s); unpublished %d", len(events), formatCounts(typeCounts), unsent)
	distinct := map[string]bool{}
	for _, d := range deliveries {
		distinct[d.EventID] = true
	}
	rep.figure("webhook deliveries: %d requests, %d distinct events, %d redeliveries", len(deliveries), len(distinct), len(deliveries)-len(distinct))
	wsDistinct := map[string]bool{}
	for _, e := range wsEvents {
		wsDistinct[e.EventID] = true
	}
	rep.figure("websocket: %d connections, %d event frames (%d distinct), %d notices/closes", wsOpens, len(wsEvents), len(wsDistinct), len(wsNotices))
	for _, n := range wsNotices {
		rep.figure("  ws notice at +%.1fs: %s", n.At.Sub(r.begin).Seconds(), n.What)
	}
	var charged int64
	charges := 0
	for _, e := range ledger {
		if e.CallID != "" {
			charged -= e.Amount
			charges++
		}
	}
	rep.figure("billing: balance %d, reserved %d, ledger entries %d (%d call charges totalling %d)", account.Balance, account.Reserved, len(ledger), charges, charged)
	for _, h := range r.heals {
		rep.figure("heal %-8s down %s, every /readyz 200 after %s, first call placed after %s", h.Fault+":",
			h.Down.Round(time.Millisecond), fmtDur(h.Ready), fmtDur(h.Serving))
	}
	r.exitsMu.Lock()
	for _, e := range r.exits {
		rep.figure("unexpected exit: %s", e)
	}
	r.exitsMu.Unlock()

	// ---- 1. every key → exactly one call
	keys := &check{Name: "every Idempotency-Key → exactly one call"}
	known := map[string]bool{}
	for _, q := range reqs {
		known[q.Key] = true
		ids := callsByKey[q.Key]
		switch {
		case len(ids) > 1:
			keys.addIn(firstPhase(q.Attempts), ids[0], "key %s: %d calls %s (the client was given %v; attempts %s)", q.Key, len(ids), strings.Join(ids, ","), q.CallIDs, attemptTrail(q.Attempts))
			for _, id := range ids[1:] {
				keys.Evidence = append(keys.Evidence, id)
			}
		case q.Outcome == "created" && len(ids) == 0:
			keys.add(firstOr(q.CallIDs), "key %s: answered 201 with %v but no such call exists", q.Key, q.CallIDs)
		case q.Outcome == "created" && (len(q.CallIDs) != 1 || q.CallIDs[0] != ids[0]):
			keys.add(ids[0], "key %s: answered 201 with %v but its call is %s", q.Key, q.CallIDs, ids[0])
		case q.Outcome == "refused" && len(ids) > 0:
			keys.add(ids[0], "key %s: refused (%s) yet call %s was placed", q.Key, statusLabel(q.Final), ids[0])
		case q.Outcome == "undecided" || q.Outcome == "":
			keys.add(firstOr(ids), "key %s: no definitive answer within %s (%d attempts, last %s; %d calls exist)", q.Key, r.cfg.RetryFor, len(q.Attempts), statusLabel(q.Final), len(ids))
		}
	}
	for key, ids := range callsByKey {
		if !known[key] {
			keys.add(ids[0], "calls %v carry key %q that no client sent", ids, key)
		}
	}
	for _, q := range reqs {
		if q.Outcome == "refused" {
			keys.add("", "key %s: refused with %s (%s) — a definitive error for a valid request", q.Key, statusLabel(q.Final), q.Final.Message)
		}
	}

	// ---- 2. every call final, with exactly one call.ended
	final := &check{Name: "every call hung up, with exactly one call.ended"}
	for _, c := range calls {
		ended := 0
		for _, e := range eventsByCall[c.ID] {
			if e.EventType == "call.ended" {
				ended++
			}
		}
		if c.Status != "hangup" || ended != 1 {
			final.add(c.ID, "call %s: status %s, %d call.ended", c.ID, c.Status, ended)
		}
	}
	for id := range eventsByCall {
		if _, ok := callByID[id]; !ok {
			final.add(id, "events for call %s, which the API does not list", id)
		}
	}
	if unsent > 0 {
		final.add("", "%d call events never published (call_outbox.tm_sent NULL)", unsent)
	}

	// ---- 3. the call records what the carrier did (items 12, 13): never longer than the carrier
	// kept it, and a call whose BYE the platform acknowledged ended normal, remote, after the hold.
	hold := &check{Name: fmt.Sprintf("calls record what the carrier did (≤ %d s +1; its acknowledged BYE → normal/remote/%d±1 s)", r.cfg.HoldSecs, r.cfg.HoldSecs)}
	sipIDs, carrier := d.sipIDs, d.carrier
	carrierCounts := map[string]int{}
	for _, c := range calls {
		seen := carrier[sipIDs[c.ID]]
		if seen == "" {
			seen = "never saw it"
		}
		carrierCounts[seen]++
		due := r.phase.at(c.TMCreate.Add(time.Duration(r.cfg.HoldSecs+1) * time.Second))
		placed := fmt.Sprintf("placed during %q, due to end during %q", r.phase.at(c.TMCreate), due)
		n := len(hold.Violations)
		switch {
		case c.Duration > r.cfg.HoldSecs+1:
			hold.addIn(due, c.ID, "call %s (%s): duration %d s, reason %s, by %s, sip %d (carrier, Call-ID %s: %s)", c.ID, placed, c.Duration, c.HangupReason, c.HangupBy, c.SIPCode, sipIDs[c.ID], seen)
		case seen == "hung up" && (c.HangupReason != "normal" || c.HangupBy != "remote" || c.Duration < r.cfg.HoldSecs-1):
			hold.addIn(due, c.ID, "call %s (%s): the carrier hung up after %d s and got its BYE answered (Call-ID %s), the call says %s/%s/%s after %d s", c.ID, placed, r.cfg.HoldSecs, sipIDs[c.ID], c.Status, c.HangupReason, c.HangupBy, c.Duration)
		}
		if len(hold.Violations) > n && sipIDs[c.ID] != "" {
			hold.Evidence = append(hold.Evidence, sipIDs[c.ID]) // the carrier's and the rtc node's side
		}
	}
	rep.figure("carrier's view of the calls: %s", formatCounts(carrierCounts))
	cross := map[string]int{}
	for _, c := range calls {
		if seen := carrier[sipIDs[c.ID]]; seen != "hung up" {
			if seen == "" {
				seen = "never saw it"
			}
			cross[fmt.Sprintf("%s → %s/%s dur=%d", seen, c.HangupReason, c.HangupBy, c.Duration)]++
		}
	}
	if len(cross) > 0 {
		rep.figure("  and what the platform recorded for them: %s", formatCounts(cross))
	}

	// ---- 4. webhook events complete and in order
	hooks := &check{Name: "webhook events complete, in order, signed (sequence 1..n, created … ended)"}
	firstArrival := map[string]map[int64]int{} // call → sequence → index of its first arrival
	for i, d := range deliveries {
		if !d.Verified {
			hooks.add(d.CallID, "event %s (%s of call %s): bad signature", d.EventID, d.EventType, d.CallID)
		}
		if _, ok := eventByID[d.EventID]; !ok {
			hooks.add(d.CallID, "event %s (%s of call %s) delivered but never committed", d.EventID, d.EventType, d.CallID)
		}
		if firstArrival[d.CallID] == nil {
			firstArrival[d.CallID] = map[int64]int{}
		}
		if _, ok := firstArrival[d.CallID][d.Sequence]; !ok {
			firstArrival[d.CallID][d.Sequence] = i
		}
	}
	for _, c := range calls {
		evs := eventsByCall[c.ID]
		sort.Slice(evs, func(i, j int) bool { return evs[i].Sequence < evs[j].Sequence })
		for i, e := range evs {
			if e.Sequence != int64(i+1) {
				hooks.add(c.ID, "call %s: committed sequences %s, not 1..%d", c.ID, seqList(evs), len(evs))
				break
			}
		}
		if len(evs) > 0 && (evs[0].EventType != "call.created" || evs[len(evs)-1].EventType != "call.ended") {
			hooks.add(c.ID, "call %s: events run %s … %s, not call.created … call.ended", c.ID, evs[0].EventType, evs[len(evs)-1].EventType)
		}
		var missing []string
		for _, e := range evs {
			if !distinct[e.EventID] {
				missing = append(missing, fmt.Sprintf("%d:%s", e.Sequence, e.EventType))
			}
		}
		if len(missing) > 0 {
			hooks.add(c.ID, "call %s: never delivered to the webhook: %s", c.ID, strings.Join(missing, " "))
		}
		arr := firstArrival[c.ID]
		seqs := make([]int64, 0, len(arr))
		for s := range arr {
			seqs = append(seqs, s)
		}
		sort.Slice(seqs, func(i, j int) bool { return arr[seqs[i]] < arr[seqs[j]] })
		for i := 1; i < len(seqs); i++ {
			if seqs[i] < seqs[i-1] {
				hooks.add(c.ID, "call %s: webhook got sequences in the order %v", c.ID, seqs)
				break
			}
		}
	}

	// ---- 5. money: balance = ledger = durations × rate
	money := &check{Name: "balance = ledger = Σ ⌈duration/60⌉ × rate, nothing left reserved"}
	var ledgerSum, expected int64
	chargeByCall := map[string]int64{}
	for _, e := range ledger {
		ledgerSum += e.Amount
		if e.CallID != "" { // whatever its kind: a call's money is every entry that names it
			chargeByCall[e.CallID] += -e.Amount
			if e.RatePerMinute != 0 && e.RatePerMinute != r.cfg.Rate60 {
				money.add(e.CallID, "call %s charged at %d a minute, the rate is %d", e.CallID, e.RatePerMinute, r.cfg.Rate60)
			}
		}
	}
	for _, c := range calls {
		want := int64((c.Duration+59)/60) * r.cfg.Rate60
		expected += want
		if got := chargeByCall[c.ID]; got != want {
			ph := r.phase.at(c.TMCreate)
			money.addIn(ph, c.ID, "call %s (placed during %q): duration %d s should cost %d, the ledger charged %d", c.ID, ph, c.Duration, want, got)
		}
	}
	for id := range chargeByCall {
		if _, ok := callByID[id]; !ok {
			money.add(id, "ledger charges call %s, which the API does not list", id)
		}
	}
	if account.Balance != ledgerSum {
		money.add("", "balance %d ≠ sum of the ledger %d", account.Balance, ledgerSum)
	}
	if want := r.cfg.Initial - expected; account.Balance != want {
		money.add("", "balance %d ≠ initial %d − Σ durations × rate %d = %d", account.Balance, r.cfg.Initial, expected, want)
	}
	if account.Reserved != 0 {
		money.add("", "%d still reserved after every call ended", account.Reserved)
	}

	// ---- 6, 7. a part that is down is 503 with Retry-After, never 500 (item 14)
	errs := &check{Name: "no 500 answers (a part that is down is 503)"}
	noRetry := &check{Name: "every 503 carries Retry-After"}
	for _, q := range reqs {
		for _, a := range q.Attempts {
			kind := statusLabel(a) + " " + truncate(a.Message, 90)
			switch {
			case a.Status == 500:
				errs.addKind(a.Phase, kind, a.RequestID, "request %s (key %s) during %q: %s %s", a.RequestID, q.Key, a.Phase, statusLabel(a), a.Message)
			case a.Status == 503 && a.RetryAfter == "":
				noRetry.addKind(a.Phase, kind, a.RequestID, "request %s (key %s) during %q: %s %s", a.RequestID, q.Key, a.Phase, statusLabel(a), a.Message)
			}
		}
	}

	// ---- 7. the WebSocket never misses events silently (item 15)
	ws := &check{Name: "websocket: no event missed without the client being told (close or notice within 30 s)"}
	for _, e := range events {
		if wsDistinct[e.EventID] || e.Timestamp.Before(r.begin) {
			continue
		}
		if inIntervals(e.Timestamp, wsDown) || noticeWithin(wsNotices, e.Timestamp, 30*time.Second) {
			continue
		}
		ph := r.phase.at(e.Timestamp)
		ws.addIn(ph, e.CallID, "event %s (%d:%s of call %s at +%.1fs, during %q) never reached the socket, and no close or notice followed",
			e.EventID, e.Sequence, e.EventType, e.CallID, e.Timestamp.Sub(r.begin).Seconds(), ph)
	}

	rep.checks = []*check{keys, final, hold, hooks, money, errs, noRetry, ws}
	return rep
}

// logFigures counts, per service, the warnings, errors and dead-lettering lines of its log.
func (r *faultRun) logFigures(rep *faultReport) {
	for _, m := range append(append([]string(nil), managers...), "carrier-sim") {
		warn, errors, dead := 0, 0, 0
		for _, l := range r.stack.LogLines(m, `"level":"`) {
			switch {
			case strings.Contains(l, `"level":"WARN"`):
				warn++
			case strings.Contains(l, `"level":"ERROR"`):
				errors++
			}
			if strings.Contains(l, "dead-letter") {
				dead++
			}
		}
		rep.figure("log of %-16s %d warnings, %d errors, %d lines about dead-lettering", m+":", warn, errors, dead)
	}
}

func (rep *faultReport) print(r *faultRun) {
	var b strings.Builder
	b.WriteString("\n==================== fault test summary ====================\n")
	for _, f := range rep.figures {
		b.WriteString(f + "\n")
	}
	b.WriteString("---- invariants\n")
	for _, c := range rep.checks {
		verdict := "ok"
		if n := len(c.Violations); n > 0 {
			verdict = fmt.Sprintf("FAIL (%d)", n)
		}
		fmt.Fprintf(&b, "%-10s %s\n", verdict, c.Name)
	}
	for _, c := range rep.checks {
		if len(c.Violations) == 0 {
			continue
		}
		fmt.Fprintf(&b, "---- %s: %d violations\n", c.Name, len(c.Violations))
		if len(c.ByPhase) > 0 {
			fmt.Fprintf(&b, "  by phase: %s\n", formatCounts(c.ByPhase))
		}
		if len(c.ByKind) > 0 {
			fmt.Fprintf(&b, "  by answer: %s\n", formatCounts(c.ByKind))
		}
		for i, v := range c.Violations {
			if i == 25 {
				fmt.Fprintf(&b, "  … %d more\n", len(c.Violations)-i)
				break
			}
			b.WriteString("  " + v + "\n")
		}
		seen := map[string]bool{}
		shown := 0
		for _, id := range c.Evidence {
			if id == "" || seen[id] || shown == 3 {
				continue
			}
			seen[id] = true
			shown++
			fmt.Fprintf(&b, "  log lines with %s:\n", id)
			for _, l := range r.logLines(id, 8) {
				b.WriteString("    " + l + "\n")
			}
		}
	}
	b.WriteString("============================================================\n")
	fmt.Print(b.String())
}

// logLines returns up to n lines of the services' logs that mention id, warnings and errors
// first.
func (r *faultRun) logLines(id string, n int) []string {
	var loud, rest []string
	for _, m := range append(append([]string(nil), managers...), "carrier-sim") {
		for _, l := range r.stack.LogLines(m, id) {
			if len(l) > 400 {
				l = l[:400] + "…"
			}
			if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
				loud = append(loud, m+": "+l)
			} else {
				rest = append(rest, m+": "+l)
			}
		}
	}
	out := append(loud, rest...)
	if len(out) > n {
		out = out[:n]
	}
	return out
}

func (r *faultRun) listCalls(cc *Client) ([]faultCall, error) {
	var all []faultCall
	token := ""
	for range 10_000 {
		path := "/v1.0/calls?page_size=100"
		if token != "" {
			path += "&page_token=" + url.QueryEscape(token)
		}
		resp := getRetrying(cc, path)
		if resp.Status != 200 {
			return nil, fmt.Errorf("GET %s = %d: %.300s", path, resp.Status, resp.Body)
		}
		var page struct {
			Result        []faultCall `json:"result"`
			NextPageToken string      `json:"next_page_token"`
		}
		if err := json.Unmarshal(resp.Body, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Result...)
		if page.NextPageToken == "" {
			return all, nil
		}
		token = page.NextPageToken
	}
	return nil, fmt.Errorf("more than 10000 pages of calls")
}

func (r *faultRun) ledger(cc *Client) ([]billingapi.Billing, billingapi.Account, error) {
	var accounts billingapi.AccountList
	resp := getRetrying(cc, "/v1.0/billing_accounts")
	if resp.Status != 200 {
		return nil, billingapi.Account{}, fmt.Errorf("GET /v1.0/billing_accounts = %d: %.300s", resp.Status, resp.Body)
	}
	if err := json.Unmarshal(resp.Body, &accounts); err != nil || len(accounts.Result) != 1 {
		return nil, billingapi.Account{}, fmt.Errorf("want one billing account: %.300s (%v)", resp.Body, err)
	}
	var all []billingapi.Billing
	token := ""
	for range 10_000 {
		path := "/v1.0/billings?page_size=100"
		if token != "" {
			path += "&page_token=" + url.QueryEscape(token)
		}
		resp := getRetrying(cc, path)
		if resp.Status != 200 {
			return nil, billingapi.Account{}, fmt.Errorf("GET %s = %d: %.300s", path, resp.Status, resp.Body)
		}
		var page billingapi.BillingList
		if err := json.Unmarshal(resp.Body, &page); err != nil {
			return nil, billingapi.Account{}, err
		}
		all = append(all, page.Result...)
		if page.NextPageToken == "" {
			return all, accounts.Result[0], nil
		}
		token = page.NextPageToken
	}
	return nil, billingapi.Account{}, fmt.Errorf("more than 10000 pages of billings")
}

// commitOf names the code under test: the repository's HEAD, "+dirty" with local changes.
func commitOf() string {
	out, err := exec.Command("git", "-C", repoRoot(), "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	commit := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", repoRoot(), "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		commit += "+dirty"
	}
	return commit
}

// getRetrying GETs path until it is answered 200, for at most 30 s: the checks read a platform
// that has just been through every fault.
func getRetrying(cc *Client, path string) Response {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp := cc.Do("GET", path, nil)
		if resp.Status == 200 || time.Now().After(deadline) {
			return resp
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// sipCallIDs maps each call to its SIP Call-ID (call_calls.sip_call_id in our MariaDB).
func (r *faultRun) sipCallIDs() (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := r.db.QueryContext(ctx, "SELECT id, sip_call_id FROM call_calls")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id []byte
		var sip string
		if err := rows.Scan(&id, &sip); err != nil {
			return nil, err
		}
		if len(id) == 16 {
			h := hex.EncodeToString(id)
			out[h[0:8]+"-"+h[8:12]+"-"+h[12:16]+"-"+h[16:20]+"-"+h[20:]] = sip
		}
	}
	return out, rows.Err()
}

// carrierOutcomes reads the carrier simulator's log: by SIP Call-ID, how its side of each call
// ended ("hung up": its BYE was answered; "BYE failed"; "caller hung up"; "answered": no end
// logged; "rejected").
func (r *faultRun) carrierOutcomes() map[string]string {
	out := map[string]string{}
	for _, line := range r.stack.LogLines("carrier-sim", `"call_id"`) {
		var l struct {
			Msg    string `json:"msg"`
			CallID string `json:"call_id"`
		}
		if json.Unmarshal([]byte(line), &l) != nil || l.CallID == "" {
			continue
		}
		switch l.Msg {
		case "answered", "hung up", "BYE failed", "caller hung up", "rejected":
			out[l.CallID] = l.Msg
		}
	}
	return out
}

// outboxEvents reads every call event the call manager committed, and how many are unpublished.
func (r *faultRun) outboxEvents() ([]outboxEvent, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := r.db.QueryContext(ctx, "SELECT payload, tm_sent IS NULL FROM call_outbox WHERE exchange = 'call.events' ORDER BY id")
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var out []outboxEvent
	unsent := 0
	for rows.Next() {
		var payload []byte
		var pending bool
		if err := rows.Scan(&payload, &pending); err != nil {
			return nil, 0, err
		}
		var e outboxEvent
		if err := json.Unmarshal(payload, &e); err != nil {
			return nil, 0, fmt.Errorf("outbox payload %.200s: %w", payload, err)
		}
		if pending {
			unsent++
		}
		out = append(out, e)
	}
	return out, unsent, rows.Err()
}

func statusLabel(a attempt) string {
	switch {
	case a.Status == 0 && a.Err != "":
		msg := a.Err
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return "transport(" + msg + ")"
	case a.Status == 0:
		return "none"
	case a.Reason != "":
		return fmt.Sprintf("%d %s", a.Status, a.Reason)
	}
	return fmt.Sprint(a.Status)
}

func attemptTrail(as []attempt) string {
	parts := make([]string, 0, len(as))
	for _, a := range as {
		parts = append(parts, fmt.Sprintf("%s@%q", statusLabel(a), a.Phase))
	}
	if len(parts) > 8 {
		parts = append(parts[:4], append([]string{"…"}, parts[len(parts)-3:]...)...)
	}
	return strings.Join(parts, " → ")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func firstPhase(as []attempt) string {
	if len(as) == 0 {
		return ""
	}
	return as[0].Phase
}

func firstOr(ids []string) string {
	if len(ids) > 0 {
		return ids[0]
	}
	return ""
}

func seqList(evs []outboxEvent) string {
	parts := make([]string, len(evs))
	for i, e := range evs {
		parts[i] = fmt.Sprintf("%d:%s", e.Sequence, e.EventType)
	}
	return strings.Join(parts, " ")
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func quantile(ds []time.Duration, q float64) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q * float64(len(s)-1))
	return s[i].Round(time.Millisecond).String()
}

func inIntervals(t time.Time, ivs [][2]time.Time) bool {
	for _, iv := range ivs {
		if !t.Before(iv[0]) && !t.After(iv[1]) {
			return true
		}
	}
	return false
}

func noticeWithin(ns []wsNotice, t time.Time, d time.Duration) bool {
	for _, n := range ns {
		if !n.At.Before(t) && n.At.Sub(t) <= d {
			return true
		}
	}
	return false
}
