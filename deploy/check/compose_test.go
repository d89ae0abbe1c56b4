package check

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// composeRules are the rules the repository's docker-compose.yml must pass.
func composeRules(t *testing.T, b *built) ComposeRules {
	t.Helper()
	root := repoRoot(t)
	local, err := LocalEnv(root, Components())
	if err != nil {
		t.Fatal(err)
	}
	return ComposeRules{
		File:       "docker-compose.yml",
		Root:       root,
		Components: Components(),
		Vars:       b.vars,
		Infra:      []string{"mariadb", "redis", "rabbitmq"},
		Published: []Port{
			{Service: "api-manager", Target: 8080, Protocol: "tcp"},
			{Service: "rtc-manager", Target: 5060, Protocol: "udp"},
			{Service: "rtc-manager", Target: 5060, Protocol: "tcp"},
			{Service: "rabbitmq", Target: 15672, Protocol: "tcp"},
		},
		LocalEnv: local,
	}
}

// loadComposeText loads compose YAML as if it were the repository's docker-compose.yml.
func loadComposeText(t *testing.T, text string) ([]Problem, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "docker-compose.yml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := LoadCompose(context.Background(), repoRoot(t), nil, file)
	if err != nil {
		return nil, err
	}
	return CheckCompose(p, composeRules(t, build(t))), nil
}

func TestCompose(t *testing.T) {
	b := build(t)
	root := repoRoot(t)
	p, err := LoadCompose(context.Background(), root, nil, filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	wantProblems(t, CheckCompose(p, composeRules(t, b)))

	// What a user's settings change must still pass, e.g. a LAN address for SIP and the API.
	p, err = LoadCompose(context.Background(), root,
		[]string{"PUBLISH_ADDRESS=0.0.0.0", "SIP_EXTERNAL_ADDRESS=192.0.2.10:5060", "JWT_KEY=0123456789abcdef0123456789abcdef"},
		filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	wantProblems(t, CheckCompose(p, composeRules(t, b)))
	if got := *p.Services["rtc-manager"].Environment["SIP_EXTERNAL_ADDRESS"]; got != "192.0.2.10:5060" {
		t.Errorf("SIP_EXTERNAL_ADDRESS = %q: the setting did not reach the service", got)
	}

	// Webhook receivers on loopback, on the compose network (Docker's default address pools) and
	// on the host (host.docker.internal, the bridge gateway) are allowed in the local stack.
	var allowed []netip.Prefix
	for _, s := range strings.Split(*p.Services["webhook-manager"].Environment["WEBHOOK_ALLOWED_NETWORKS"], ",") {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("WEBHOOK_ALLOWED_NETWORKS: %v", err)
		}
		allowed = append(allowed, pfx)
	}
	for _, addr := range []string{"127.0.0.1", "::1", "172.17.0.1", "172.18.0.7", "172.31.255.1", "192.168.16.3"} {
		a := netip.MustParseAddr(addr)
		if !slices.ContainsFunc(allowed, func(p netip.Prefix) bool { return p.Contains(a) }) {
			t.Errorf("WEBHOOK_ALLOWED_NETWORKS %v does not allow %s", allowed, addr)
		}
	}
	if !slices.Contains(p.Services["webhook-manager"].ExtraHosts["host.docker.internal"], "host-gateway") {
		t.Errorf("webhook-manager has no host.docker.internal:host-gateway: %v", p.Services["webhook-manager"].ExtraHosts)
	}
}

// TestComposeExternal loads deploy/docker/compose.external.yml over docker-compose.yml: the
// managers reach the given MySQL, Redis and RabbitMQ, the local ones are not started, and the
// result passes the same checks (without the RabbitMQ UI, which is no longer there to publish).
func TestComposeExternal(t *testing.T) {
	b := build(t)
	root := repoRoot(t)
	files := []string{filepath.Join(root, "docker-compose.yml"), filepath.Join(root, "deploy/docker/compose.external.yml")}
	env := []string{
		"DATABASE_DSN=voipbin:pw@tcp(db.example.internal:3306)/voipbin",
		"RABBITMQ_ADDRESS=amqps://voipbin:pw@mq.example.internal:5671/voipbin",
		"REDIS_ADDRESS=cache.example.internal:6379",
	}
	p, err := LoadCompose(context.Background(), root, env, files...)
	if err != nil {
		t.Fatal(err)
	}
	rules := composeRules(t, b)
	rules.Infra = nil
	rules.Published = rules.Published[:3]
	wantProblems(t, CheckCompose(p, rules))
	for _, infra := range []string{"mariadb", "redis", "rabbitmq"} {
		if _, ok := p.Services[infra]; ok {
			t.Errorf("%s still runs", infra)
		}
	}
	for name, svc := range p.Services {
		for k, v := range svc.Environment {
			for _, local := range []string{"mariadb:", "redis:", "rabbitmq:"} {
				if v != nil && strings.Contains(*v, local) {
					t.Errorf("%s: %s=%s still points at the local %s", name, k, *v, strings.TrimSuffix(local, ":"))
				}
			}
		}
	}
	if got := *p.Services["rtc-manager"].Environment["REDIS_ADDRESS"]; got != "cache.example.internal:6379" {
		t.Errorf("rtc-manager REDIS_ADDRESS = %q", got)
	}

	// Without the settings, compose refuses to start and says which is missing.
	_, err = LoadCompose(context.Background(), root, env[1:], files...)
	if err == nil || !strings.Contains(err.Error(), "set DATABASE_DSN") {
		t.Errorf("without DATABASE_DSN: err = %v", err)
	}
}

// TestComposeFindsProblems breaks the repository's docker-compose.yml one way at a time.
func TestComposeFindsProblems(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	callBuild := "      context: .\n      dockerfile: bin-call-manager/Dockerfile\n"
	tests := []struct {
		name, old, new string
		want           []string
	}{
		{"wrong dockerfile", "dockerfile: bin-call-manager/Dockerfile\n", "dockerfile: bin-call-manager/Dockerfile.debug\n",
			[]string{"call-manager: dockerfile bin-call-manager/Dockerfile.debug; want bin-call-manager/Dockerfile"}},
		{"context not the root", callBuild, "      context: ./bin-call-manager\n      dockerfile: Dockerfile\n",
			[]string{"call-manager: build context", "want the repository root"}},
		{"no build", "    build:\n" + callBuild, "",
			[]string{"call-manager: no build"}},
		{"pulled, not built", "  pull_policy: build\n", "",
			[]string{"call-manager: pull_policy \"\"; want build", "carrier-sim: pull_policy"}},
		{"image name", "image: voipbin/call-manager:", "image: call-manager:",
			[]string{"call-manager: image \"call-manager:dev\""}},
		{"unknown variable", "      ADMIN_ADDRESS: 0.0.0.0:9101\n", "      ADMIN_ADDRESS: 0.0.0.0:9101\n      CALL_TIMEOUT: 5s\n",
			[]string{"call-manager: environment CALL_TIMEOUT: call-manager does not read it"}},
		{"required variable unset", "      JWT_KEY: ${JWT_KEY:-voipbin-compose-local-only-jwt-key-0123456789}\n", "",
			[]string{"api-manager: environment JWT_KEY is required and not set"}},
		{"required variable empty", "      NODE_ID: compose-rtc-1\n", "      NODE_ID: \"\"\n",
			[]string{"rtc-manager: environment NODE_ID is required and not set"}},
		{"value from the host", "      BILLING_INITIAL_BALANCE: \"10000000\"", "      BILLING_INITIAL_BALANCE:",
			[]string{"billing-manager: environment BILLING_INITIAL_BALANCE has no value"}},
		{"listening on loopback", "HTTP_ADDRESS: 0.0.0.0:8080", "HTTP_ADDRESS: 127.0.0.1:8080",
			[]string{"HTTP_ADDRESS=127.0.0.1:8080: listen on 0.0.0.0", "publishes 8080/tcp, but no *_ADDRESS it reads listens on 0.0.0.0:8080"}},
		{"admin address left to its default", "      ADMIN_ADDRESS: 0.0.0.0:9102\n", "",
			[]string{"billing-manager: environment ADMIN_ADDRESS is not set: its default 127.0.0.1:9102 is unreachable"}},
		{"a variable make run sets", "      CORS_ORIGINS: http://127.0.0.1:8080,http://localhost:8080\n", "",
			[]string{"api-manager: environment CORS_ORIGINS: `make run` sets it"}},
		{"healthcheck on the wrong port", `"http://127.0.0.1:9101/readyz"`, `"http://127.0.0.1:9100/readyz"`,
			[]string{"call-manager: healthcheck http://127.0.0.1:9100/readyz: want http://127.0.0.1:9101/readyz"}},
		{"healthcheck with curl", `["CMD", "/usr/local/bin/healthcheck", "http://127.0.0.1:9104/readyz"]`, `["CMD", "curl", "-f", "http://127.0.0.1:9104/readyz"]`,
			[]string{"webhook-manager: healthcheck [\"CMD\" \"curl\""}},
		{"healthcheck without interval", "      test: [\"CMD\", \"/usr/local/bin/healthcheck\", \"http://127.0.0.1:9102/readyz\"]\n      interval: 5s\n",
			"      test: [\"CMD\", \"/usr/local/bin/healthcheck\", \"http://127.0.0.1:9102/readyz\"]\n",
			[]string{"billing-manager: healthcheck has no interval"}},
		{"infrastructure without healthcheck", "    healthcheck:\n      test: [\"CMD\", \"redis-cli\", \"ping\"]\n      interval: 5s\n      timeout: 3s\n      retries: 20\n", "",
			[]string{"redis: no healthcheck", "depends_on redis, which has no healthcheck"}},
		{"started is not healthy", "  mariadb: {condition: service_healthy}\n", "  mariadb: {condition: service_started}\n",
			[]string{"api-manager: depends_on mariadb: condition \"service_started\"; want service_healthy"}},
		{"a dependency its environment names", "      carrier-sim: {condition: service_healthy}\n", "",
			[]string{"rtc-manager: environment RTC_TEL_TRUNK_URI reaches carrier-sim, which is not in depends_on"}},
		{"an extra published port", "    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthcheck\", \"http://127.0.0.1:9101/readyz\"]\n",
			"    ports: [\"9101:9101\"]\n    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthcheck\", \"http://127.0.0.1:9101/readyz\"]\n",
			[]string{"call-manager: publishes 9101/tcp; only api-manager 8080/tcp, rtc-manager 5060/udp, rtc-manager 5060/tcp, rabbitmq 15672/tcp may be published"}},
		{"the management UI unpublished", "    ports:\n      - \"${PUBLISH_ADDRESS:-127.0.0.1}:15672:15672\" # management UI\n", "",
			[]string{"rabbitmq: does not publish 15672/tcp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := loadComposeText(t, mutate(t, string(orig), tt.old, tt.new))
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			wantProblems(t, got, tt.want...)
		})
	}
	t.Run("a missing service", func(t *testing.T) {
		text := mutate(t, string(orig), "  billing-manager:\n", "  billing-manager-old:\n")
		text = mutate(t, text, "      billing-manager: {condition: service_healthy}\n", "") // api-manager's
		got, err := loadComposeText(t, text)
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		wantProblems(t, got, "billing-manager: missing", "billing-manager-old: a service the checks do not know")
	})
}

// TestLoadComposeRefuses feeds files that docker compose itself would refuse.
func TestLoadComposeRefuses(t *testing.T) {
	tests := []struct{ file, want string }{
		{"testdata/compose/syntax.yml", "yaml"},
		{"testdata/compose/unknown-key.yml", "buildd"},
		{"testdata/compose/missing-dependency.yml", "database"},
		{"testdata/compose/bad-port.yml", "port"},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			abs, err := filepath.Abs(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = LoadCompose(context.Background(), repoRoot(t), nil, abs)
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestLocalEnv(t *testing.T) {
	got, err := LocalEnv(repoRoot(t), Components())
	if err != nil {
		t.Fatal(err)
	}
	for component, names := range map[string][]string{
		"api-manager":     {"DATABASE_DSN", "ADMIN_ADDRESS", "HTTP_ADDRESS", "JWT_KEY", "CORS_ORIGINS"},
		"rtc-manager":     {"RABBITMQ_ADDRESS", "NODE_ID", "SIP_LISTEN_ADDRESS", "RTC_TEL_TRUNK_URI"},
		"carrier-sim":     {"CARRIER_LISTEN_ADDRESS", "LOG_LEVEL"},
		"billing-manager": {"BILLING_INITIAL_BALANCE"},
	} {
		for _, n := range names {
			if !slices.Contains(got[component], n) {
				t.Errorf("LocalEnv[%s] = %v lacks %s", component, got[component], n)
			}
		}
	}
	if slices.Contains(got["call-manager"], "JWT_KEY") {
		t.Errorf("LocalEnv[call-manager] has api-manager's JWT_KEY: %v", got["call-manager"])
	}

	// A run.sh that no longer has the shape LocalEnv reads is an error, not an empty answer.
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "deploy/local"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(filepath.Join(root, "deploy/local/env.sh"), []byte("export A B\n"), 0o644)
	_ = os.WriteFile(filepath.Join(root, "deploy/local/run.sh"), []byte("#!/bin/bash\nrun() {\n}\n"), 0o644)
	if _, err := LocalEnv(root, Components()); err == nil || !strings.Contains(err.Error(), "proc_env") {
		t.Errorf("LocalEnv on a run.sh without proc_env: err = %v", err)
	}
}

func TestNamesHost(t *testing.T) {
	tests := []struct {
		value, service string
		want           bool
	}{
		{"redis:6379", "redis", true},
		{"amqp://u:p@rabbitmq:5672/", "rabbitmq", true},
		{"voipbin:pw@tcp(mariadb:3306)/voipbin", "mariadb", true},
		{"sip:{number}@carrier-sim:5080", "carrier-sim", true},
		{"rtc-manager:5060", "rtc-manager", true},
		{"http://api-manager/x", "api-manager", true},
		{"myredis:6379", "redis", false},
		{"redis-cache:6379", "redis", false},
		{"compose-rtc-1", "rtc-manager", false},
	}
	for _, tt := range tests {
		if got := namesHost(tt.value, tt.service); got != tt.want {
			t.Errorf("namesHost(%q, %q) = %v, want %v", tt.value, tt.service, got, tt.want)
		}
	}
}
