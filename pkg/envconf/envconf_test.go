package envconf

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestReaderCollectsEveryProblem(t *testing.T) {
	r := New(env(map[string]string{
		"N": "x", "D": "-1s", "U": "http://h", "DSN": "not a dsn", "HP": "nohost", "B": "maybe",
	}))
	r.Int("N", 1, 0, 10)
	r.Duration("D", time.Second)
	r.URL("U", "", true, "amqp")
	r.MySQLDSN("DSN", "", true)
	r.HostPort("HP", "", true)
	r.Bool("B", false)
	r.String("MISSING", "", true)
	err := r.Err()
	if err == nil {
		t.Fatal("Err() = nil, want every problem")
	}
	for _, name := range []string{"N:", "D:", "U:", "DSN:", "HP:", "B:", "MISSING:"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}

func TestReaderDefaultsAndValues(t *testing.T) {
	r := New(env(map[string]string{"DSN": "root@tcp(127.0.0.1:3306)/voipbin", "L": " a, b ,,c", "I": "7"}))
	dsn := r.MySQLDSN("DSN", "", true)
	for _, opt := range []string{"parseTime=true", "interpolateParams=true"} {
		if !strings.Contains(dsn, opt) {
			t.Errorf("dsn %q lacks %s", dsn, opt)
		}
	}
	if got := r.List("L", ""); strings.Join(got, "|") != "a|b|c" {
		t.Errorf("List = %v", got)
	}
	if got := r.Int("I", 1, 0, 10); got != 7 {
		t.Errorf("Int = %d, want 7", got)
	}
	if got := r.Duration("X", 3*time.Second); got != 3*time.Second {
		t.Errorf("Duration default = %s", got)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("Err() = %v, want nil", err)
	}
}

func TestURLProblemDoesNotLeakPassword(t *testing.T) {
	r := New(env(map[string]string{"U": "http://guest:s3cret@host/"}))
	r.URL("U", "", true, "amqp")
	if err := r.Err(); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Err() = %v", err)
	}
}

func TestPrefixes(t *testing.T) {
	r := New(env(map[string]string{"OK": " 127.0.0.0/8, ::1 ,10.1.2.3/8", "BAD": "127.0.0.0/8,nope,10.0.0.0/33"}))
	got := r.Prefixes("OK", "")
	if len(got) != 3 || got[0].String() != "127.0.0.0/8" || got[1].String() != "::1/128" || got[2].String() != "10.0.0.0/8" {
		t.Fatalf("Prefixes = %v", got)
	}
	if r.Err() != nil {
		t.Fatalf("Err = %v", r.Err())
	}
	if got := r.Prefixes("BAD", ""); len(got) != 1 {
		t.Fatalf("Prefixes = %v, want only the valid one", got)
	}
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), `"10.0.0.0/33"`) {
		t.Fatalf("Err = %v, want both bad values named", err)
	}
}
