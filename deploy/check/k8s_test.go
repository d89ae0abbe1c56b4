package check

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

func k8sRules(b *built) K8sRules {
	return K8sRules{Dir: "deploy/k8s", Namespace: "voipbin", Components: Components(), Vars: b.vars, MinReplicas: 2}
}

func TestManifests(t *testing.T) {
	b := build(t)
	m, err := LoadManifests(filepath.Join(repoRoot(t), "deploy/k8s"))
	if err != nil {
		t.Fatal(err)
	}
	wantProblems(t, CheckManifests(m, k8sRules(b)))
	for _, c := range Components() {
		if c.Manager {
			if _, ok := m.Find("PodDisruptionBudget", c.Name); !ok {
				t.Errorf("no PodDisruptionBudget/%s", c.Name)
			}
		}
	}
	// Production refuses webhook targets in private, loopback and link-local ranges: nothing
	// may widen that in the manifests.
	o, ok := m.Find("Deployment", "webhook-manager")
	if !ok {
		t.Fatal("no Deployment/webhook-manager")
	}
	for _, e := range o.Obj.(*appsv1.Deployment).Spec.Template.Spec.Containers[0].Env {
		if e.Name == "WEBHOOK_ALLOWED_NETWORKS" {
			t.Errorf("webhook-manager sets WEBHOOK_ALLOWED_NETWORKS in production: %+v", e)
		}
	}
	// Nor sip destinations: no manifest sets RTC_SIP_ALLOWED_NETWORKS.
	for _, f := range []string{"api-manager.yaml", "rtc-manager.yaml", "config.yaml"} {
		data, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/k8s", f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), "RTC_SIP_ALLOWED_NETWORKS") {
			t.Errorf("deploy/k8s/%s sets RTC_SIP_ALLOWED_NETWORKS in production", f)
		}
	}
}

// copyManifests copies deploy/k8s to a temporary directory, with file's text mutated.
func copyManifests(t *testing.T, file, old, new string) string {
	t.Helper()
	src := filepath.Join(repoRoot(t), "deploy/k8s")
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == file {
			data = []byte(mutate(t, string(data), old, new))
			found = true
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("deploy/k8s has no %s", file)
	}
	return dst
}

// TestManifestsFindProblems breaks the repository's manifests one way at a time.
func TestManifestsFindProblems(t *testing.T) {
	b := build(t)
	const (
		api, call, billing, rtc, webhook = "api-manager.yaml", "call-manager.yaml", "billing-manager.yaml", "rtc-manager.yaml", "webhook-manager.yaml"
	)
	tests := []struct {
		name, file, old, new string
		want                 []string
	}{
		{"one replica", call, "  replicas: 2\n", "  replicas: 1\n",
			[]string{"deploy/k8s/call-manager.yaml: Deployment/call-manager: replicas 1; want at least 2"}},
		{"replicas unset", webhook, "  replicas: 2\n", "",
			[]string{"Deployment/webhook-manager: replicas unset (1); want at least 2"}},
		{"replicas beside an autoscaler", api, "  revisionHistoryLimit: 5\n", "  replicas: 3\n  revisionHistoryLimit: 5\n",
			[]string{"Deployment/api-manager: replicas is set, but a HorizontalPodAutoscaler owns the count"}},
		{"autoscaler down to one", api, "  minReplicas: 2\n", "  minReplicas: 1\n",
			[]string{"Deployment/api-manager: its HorizontalPodAutoscaler's minReplicas is 1; want at least 2", "HorizontalPodAutoscaler/api-manager: minReplicas below 2"}},
		{"autoscaler of nothing", api, "kind: Deployment, name: api-manager}", "kind: Deployment, name: api}",
			[]string{"HorizontalPodAutoscaler/api-manager: scaleTargetRef Deployment/api: no such workload"}},
		{"readiness on the wrong path", call, "httpGet: {path: /readyz, port: admin}", "httpGet: {path: /ready, port: admin}",
			[]string{"Deployment/call-manager: readinessProbe: path \"/ready\"; want /readyz"}},
		{"liveness on the wrong port", call, "            httpGet: {path: /healthz, port: admin}\n            periodSeconds: 10\n",
			"            httpGet: {path: /healthz, port: 8080}\n            periodSeconds: 10\n",
			[]string{"Deployment/call-manager: livenessProbe: port 8080; the admin port (ADMIN_ADDRESS) is 9101"}},
		{"probe on an unnamed port", billing, "httpGet: {path: /readyz, port: admin}", "httpGet: {path: /readyz, port: metrics}",
			[]string{"Deployment/billing-manager: readinessProbe: port \"metrics\" is no container port"}},
		{"no liveness probe", webhook, "          livenessProbe:\n            httpGet: {path: /healthz, port: admin}\n            periodSeconds: 10\n            timeoutSeconds: 3\n            failureThreshold: 3\n", "",
			[]string{"Deployment/webhook-manager: livenessProbe: want httpGet /healthz"}},
		{"no limits", call, "            limits: {cpu: \"1\", memory: 512Mi}\n", "",
			[]string{"Deployment/call-manager: no cpu limit", "Deployment/call-manager: no memory limit"}},
		{"request above limit", billing, "requests: {cpu: 50m, memory: 64Mi}", "requests: {cpu: 50m, memory: 1Gi}",
			[]string{"Deployment/billing-manager: memory request 1Gi is above its limit 256Mi"}},
		{"budget blocking drains", call, "  maxUnavailable: 1\n", "  minAvailable: 2\n",
			[]string{"PodDisruptionBudget/call-manager: minAvailable 2 with 2 replicas blocks every eviction"}},
		{"budget selecting nothing", billing, "  maxUnavailable: 1\n  selector:\n    matchLabels: {app.kubernetes.io/name: billing-manager}\n",
			"  maxUnavailable: 1\n  selector:\n    matchLabels: {app.kubernetes.io/name: billing}\n",
			[]string{"PodDisruptionBudget/billing-manager: its selector matches no workload's pods", "Deployment/billing-manager: no PodDisruptionBudget selects its pods"}},
		{"a Secret key that does not exist", api, "key: JWT_KEY}", "key: JWT_SECRET}",
			[]string{"Deployment/api-manager: env JWT_KEY: Secret \"voipbin-secrets\" has no key \"JWT_SECRET\""}},
		{"a ConfigMap that does not exist", api, "name: voipbin-config, key: CORS_ORIGINS}", "name: api-config, key: CORS_ORIGINS}",
			[]string{"Deployment/api-manager: env CORS_ORIGINS: ConfigMap \"api-config\" is not defined in the manifests"}},
		{"a variable the binary does not read", call, "            - name: ADMIN_ADDRESS\n", "            - name: CALL_TIMEOUT\n              value: 5s\n            - name: ADMIN_ADDRESS\n",
			[]string{"Deployment/call-manager: env CALL_TIMEOUT: call-manager does not read it"}},
		{"a required variable unset", billing, "            - name: DATABASE_DSN\n              valueFrom:\n                secretKeyRef: {name: voipbin-secrets, key: DATABASE_DSN}\n", "",
			[]string{"Deployment/billing-manager: env DATABASE_DSN is required and not (surely) set"}},
		{"a required variable from an optional key", billing, "secretKeyRef: {name: voipbin-secrets, key: DATABASE_DSN}", "secretKeyRef: {name: voipbin-secrets, key: DATABASE_DSN, optional: true}",
			[]string{"Deployment/billing-manager: env DATABASE_DSN is required and not (surely) set"}},
		{"listening on loopback", call, `value: "0.0.0.0:9101"`, `value: "127.0.0.1:9101"`,
			[]string{"Deployment/call-manager: env ADMIN_ADDRESS must be set to 0.0.0.0:<port>"}},
		{"a port not declared", api, "            - {name: http, containerPort: 8080, protocol: TCP}\n", "",
			[]string{"Deployment/api-manager: HTTP_ADDRESS=0.0.0.0:8080: port 8080 is not among the container's ports", "Service/api-manager: port http: targetPort http is not a port of Deployment/api-manager"}},
		{"a helper nothing uses", rtc, `value: "$(POD_IP):5060"`, `value: "192.0.2.1:5060"`,
			[]string{"StatefulSet/rtc-manager: env POD_IP: rtc-manager does not read it"}},
		{"node id not the pod name", rtc, "            - name: NODE_ID\n              valueFrom:\n                fieldRef: {fieldPath: metadata.name}\n", "            - name: NODE_ID\n              value: rtc-1\n",
			[]string{"StatefulSet/rtc-manager: NODE_ID must come from the pod's name"}},
		{"node-owning service not headless", rtc, "  clusterIP: None\n", "",
			[]string{"StatefulSet/rtc-manager: serviceName \"rtc-manager\" is not headless"}},
		{"a Service selecting nothing", call, "  selector: {app.kubernetes.io/name: call-manager}\n  ports:", "  selector: {app.kubernetes.io/name: call-managr}\n  ports:",
			[]string{"Service/call-manager: its selector matches no workload's pods"}},
		{"a Service to an unknown port", api, "targetPort: http", "targetPort: web",
			[]string{"Service/api-manager: port http: targetPort web is not a port of Deployment/api-manager"}},
		{"another image", billing, "image: voipbin/billing-manager:dev", "image: billing:dev",
			[]string{"Deployment/billing-manager: image \"billing:dev\""}},
		{"writable root", webhook, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
			[]string{"Deployment/webhook-manager: readOnlyRootFilesystem is not true"}},
		{"root allowed", webhook, "        runAsNonRoot: true\n", "",
			[]string{"Deployment/webhook-manager: runAsNonRoot is not true"}},
		{"privilege escalation", call, "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true",
			[]string{"Deployment/call-manager: allowPrivilegeEscalation is not false"}},
		{"another namespace", "config.yaml", "  namespace: voipbin\n", "  namespace: default\n",
			[]string{"deploy/k8s/config.yaml: ConfigMap/voipbin-config: namespace \"default\"; want \"voipbin\""}},
		{"a manifest kustomize would skip", "kustomization.yaml", "  - webhook-manager.yaml\n", "",
			[]string{"deploy/k8s/kustomization.yaml: resources does not list webhook-manager.yaml"}},
		{"a resource that is not here", "kustomization.yaml", "  - webhook-manager.yaml\n", "  - webhook-manager.yaml\n  - ingress.yaml\n",
			[]string{"resources lists ingress.yaml, which is not a manifest here"}},
		{"an image without a tag setting", "kustomization.yaml", "  - {name: voipbin/rtc-manager, newTag: dev}\n", "",
			[]string{"images does not set the tag of voipbin/rtc-manager"}},
		{"a manager with no workload", billing, "kind: Deployment\nmetadata:\n  name: billing-manager\n", "kind: Deployment\nmetadata:\n  name: billing\n",
			[]string{"billing-manager: no Deployment or StatefulSet runs it"}},
		{"a name twice", call, "kind: Service\nmetadata:\n  name: call-manager\n", "kind: Service\nmetadata:\n  name: billing-manager\n",
			[]string{"Service/billing-manager: defined twice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := copyManifests(t, tt.file, tt.old, tt.new)
			m, err := LoadManifests(dir)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			wantProblems(t, CheckManifests(m, k8sRules(b)), tt.want...)
		})
	}
	t.Run("no PodDisruptionBudget", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/k8s", webhook))
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(string(data), "kind: PodDisruptionBudget")
		j := strings.LastIndex(string(data[:max(i, 0)]), "---\n")
		if i < 0 || j < 0 {
			t.Fatal("webhook-manager.yaml has no PodDisruptionBudget document")
		}
		rest := string(data[i:])
		end := strings.Index(rest, "\n---\n")
		cut := string(data[:j])
		if end >= 0 {
			cut += rest[end+1:]
		}
		dir := copyManifests(t, webhook, string(data), cut)
		m, err := LoadManifests(dir)
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		wantProblems(t, CheckManifests(m, k8sRules(b)), "Deployment/webhook-manager: no PodDisruptionBudget selects its pods")
	})
}

// TestLoadManifestsRefuses feeds manifests that would not apply: each must fail to load, naming
// its file and what is wrong.
func TestLoadManifestsRefuses(t *testing.T) {
	tests := []struct{ file, want string }{
		{"syntax.yaml", "yaml"},
		{"unknown-field.yaml", `unknown field "replica"`},
		{"duplicate-field.yaml", `"replicas" already set`},
		{"wrong-type.yaml", "replicas"},
		{"bad-quantity.yaml", "quantities must match"},
		{"unknown-kind.yaml", `apiVersion "apps/v1beta1" kind "Deployment" is not one the checks know`},
		{"bad-kustomization/kustomization.yaml", `unknown field "resource"`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			dir := t.TempDir()
			data, err := os.ReadFile(filepath.Join("testdata/k8s", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(tt.file)), data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = LoadManifests(dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), filepath.Base(tt.file)) {
				t.Fatalf("err = %v, want one naming %s and containing %q", err, filepath.Base(tt.file), tt.want)
			}
		})
	}
}
