package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

// TestEveryKeyIsOneCallWhileManagersAreKilled is the fault that placed calls twice (issue 10,
// item 5), in small: clients place calls with an Idempotency-Key and retry every failure with
// the same key while the rtc manager, the call manager and the api manager are SIGKILLed in turn
// and restarted. Whatever the clients were answered, every key ends up as exactly one call, and
// every 201 a client got for a key names that call.
func TestEveryKeyIsOneCallWhileManagersAreKilled(t *testing.T) {
	start := time.Now()
	// Short create budgets, so that an attempt killed mid-way is taken over sooner.
	stack := StartStack(t, map[string]string{"CALL_CREATE_BUDGET": "5s", "CALL_GATE_BUDGET": "1s", "CALL_DIAL_BUDGET": "3s"})
	t.Logf("stack up in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	admin := stack.NewClient().Login(stack.AdminUser, stack.AdminPass)
	_, cc := stack.NewCustomer(admin, strings.ToLower(testenv.Name("idem")))
	testenv.Eventually(t, 15*time.Second, "the billing account", func() bool {
		var accounts struct {
			Result []json.RawMessage `json:"result"`
		}
		cc.Must(200, "GET", "/v1.0/billing_accounts", nil).JSON(t, &accounts)
		return len(accounts.Result) == 1
	})

	const workers, keysEach = 6, 6
	run := testenv.Name("run")
	var done atomic.Int64
	var mu sync.Mutex
	answered := map[string][]string{} // key → the call ids of every 201 it got
	codes := map[int]int{}            // status of every attempt (0: no answer)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range keysEach {
				key := fmt.Sprintf("%s-%d-%d", run, w, k)
				id, trail := placeWithRetries(stack.API, cc.Token, key, 60*time.Second)
				mu.Lock()
				for _, c := range trail {
					codes[c]++
				}
				if id != "" {
					answered[key] = append(answered[key], id)
				}
				mu.Unlock()
				done.Add(1)
			}
		}()
	}
	// Kill each manager in turn while calls are being placed; each comes back.
	for i, name := range []string{"rtc-manager", "call-manager", "api-manager"} {
		target := int64((i + 1) * workers * keysEach / 5)
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d keys placed before killing %s", target, name), func() bool {
			return done.Load() >= target
		})
		stack.Kill(name)
		if name == "rtc-manager" {
			// Long enough that dials in flight outlive the old gateway timeout (3 s).
			time.Sleep(4 * time.Second) // the outage injected has a fixed length
		}
		stack.Restart(name)
	}
	wg.Wait()
	t.Logf("%d keys placed in %s", workers*keysEach, time.Since(start).Round(time.Millisecond))

	// Every key is one call, and it is the call the clients were given.
	type listed struct {
		ID       string            `json:"id"`
		Metadata map[string]string `json:"metadata"`
	}
	byKey := map[string][]string{}
	token := ""
	for {
		var page struct {
			Result        []listed `json:"result"`
			NextPageToken string   `json:"next_page_token"`
		}
		path := "/v1.0/calls?page_size=100"
		if token != "" {
			path += "&page_token=" + token
		}
		cc.Must(200, "GET", path, nil).JSON(t, &page)
		for _, c := range page.Result {
			byKey[c.Metadata["key"]] = append(byKey[c.Metadata["key"]], c.ID)
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("attempts by status: %v (0: no answer)", codes)
	doubled := 0
	for w := range workers {
		for k := range keysEach {
			key := fmt.Sprintf("%s-%d-%d", run, w, k)
			calls := byKey[key]
			if len(calls) != 1 {
				doubled++
				t.Errorf("key %s made %d calls %v, want 1", key, len(calls), calls)
				continue
			}
			if len(answered[key]) == 0 {
				t.Errorf("key %s: no client ever got its call %s", key, calls[0])
			}
			for _, id := range answered[key] {
				if id != calls[0] {
					t.Errorf("key %s: a client was given call %s, but the key's call is %s", key, id, calls[0])
				}
			}
		}
	}
	if len(byKey) != workers*keysEach {
		t.Errorf("%d keys have calls, want %d", len(byKey), workers*keysEach)
	}
	if doubled > 0 {
		t.Errorf("%d of %d keys made more than one call", doubled, workers*keysEach)
	}
}

// placeWithRetries places one call to a busy number with key, retrying every failure with the
// same key as a client would (honouring Retry-After, at most 1 s), until a 201 or the timeout. It
// returns the call id of the 201 and the status of every attempt (0: no answer).
func placeWithRetries(api, token, key string, timeout time.Duration) (string, []int) {
	body, _ := json.Marshal(map[string]any{
		"source":       map[string]string{"type": "tel", "target": "+15550001111"},
		"destinations": []map[string]string{{"type": "tel", "target": "+1486000000"}},
		"metadata":     map[string]string{"key": key},
	})
	hc := &http.Client{Timeout: 20 * time.Second}
	var trail []int
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		req, _ := http.NewRequest("POST", api+"/v1.0/calls", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Idempotency-Key", key)
		resp, err := hc.Do(req)
		wait := 100 * time.Millisecond
		if err != nil {
			trail = append(trail, 0)
		} else {
			var out struct {
				Calls []struct {
					ID string `json:"id"`
				} `json:"calls"`
			}
			err := json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			trail = append(trail, resp.StatusCode)
			if resp.StatusCode == http.StatusCreated && err == nil && len(out.Calls) == 1 {
				return out.Calls[0].ID, trail
			}
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
				wait = min(time.Duration(s)*time.Second, time.Second)
			}
		}
		time.Sleep(wait) // a client's back-off
	}
	return "", trail
}
