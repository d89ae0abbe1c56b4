package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// Client talks to the public API as a customer's program would.
type Client struct {
	t     testing.TB
	base  string
	Token string
}

// Response is one API answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v.
func (r Response) JSON(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

// NewClient is an anonymous client of the stack's API.
func (s *Stack) NewClient() *Client { return &Client{t: s.t, base: s.API} }

// Do sends a request with an optional JSON body and extra headers.
func (c *Client) Do(method, path string, body any, headers ...string) Response {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// Must sends a request and fails the test unless the status is want.
func (c *Client) Must(want int, method, path string, body any, headers ...string) Response {
	c.t.Helper()
	r := c.Do(method, path, body, headers...)
	if r.Status != want {
		c.t.Fatalf("%s %s = %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	return r
}

// Login logs in and keeps the token.
func (c *Client) Login(username, password string) *Client {
	c.t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	c.Must(200, "POST", "/auth/login", map[string]string{"username": username, "password": password}).JSON(c.t, &out)
	if out.Token == "" {
		c.t.Fatal("login returned no token")
	}
	c.Token = out.Token
	return c
}

// Customer is the part of the customer record the tests read.
type Customer struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Call is the part of the call record the tests read.
type Call struct {
	ID           string `json:"id"`
	CustomerID   string `json:"customer_id"`
	Status       string `json:"status"`
	HangupBy     string `json:"hangup_by"`
	HangupReason string `json:"hangup_reason"`
	HangupCause  int    `json:"hangup_cause"`
	SIPCode      int    `json:"sip_code"`
	Duration     int    `json:"duration"`
}

// NewCustomer creates a customer as superadmin and returns it with a logged-in client of its admin.
func (s *Stack) NewCustomer(admin *Client, name string) (Customer, *Client) {
	s.t.Helper()
	username := name + "-admin"
	password := "pw-" + name + "-secret"
	r := admin.Must(201, "POST", "/v1.0/customers", map[string]string{"name": name, "username": username, "password": password})
	var out struct {
		Customer
		Nested *Customer `json:"customer"`
	}
	r.JSON(s.t, &out)
	c := out.Customer
	if out.Nested != nil && out.Nested.ID != "" {
		c = *out.Nested
	}
	if c.ID == "" {
		s.t.Fatalf("customer creation returned no id: %s", r.Body)
	}
	return c, s.NewClient().Login(username, password)
}

// PlaceCall places one call from source to a tel number and returns it.
func (c *Client) PlaceCall(number string, headers ...string) Call {
	c.t.Helper()
	r := c.Must(201, "POST", "/v1.0/calls", map[string]any{
		"source":       map[string]string{"type": "tel", "target": "+15550001111"},
		"destinations": []map[string]string{{"type": "tel", "target": number}},
	}, headers...)
	var out struct {
		Calls []Call `json:"calls"`
	}
	r.JSON(c.t, &out)
	if len(out.Calls) != 1 {
		c.t.Fatalf("want one call, got %s", r.Body)
	}
	return out.Calls[0]
}

// WaitCall polls a call until cond holds or the timeout passes.
func (c *Client) WaitCall(id string, timeout time.Duration, cond func(Call) bool) Call {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last Call
	for time.Now().Before(deadline) {
		c.Must(200, "GET", "/v1.0/calls/"+id, nil).JSON(c.t, &last)
		if cond(last) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("call %s: condition not met in %s; last %+v", id, timeout, last)
	return last
}

func (c Call) String() string {
	return fmt.Sprintf("%s status=%s reason=%s by=%s cause=%d sip=%d duration=%d", c.ID, c.Status, c.HangupReason, c.HangupBy, c.HangupCause, c.SIPCode, c.Duration)
}
