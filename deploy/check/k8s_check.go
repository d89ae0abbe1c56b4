package check

import (
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// K8sRules is what the manifests are checked against.
type K8sRules struct {
	Dir         string // the manifests' directory relative to the repository root, for Problems
	Namespace   string // every namespaced object lives here, and the Namespace is defined
	Components  []Component
	Vars        Vars
	MinReplicas int32 // each manager runs at least this many pods
}

// workload is a Deployment or StatefulSet, seen the same way.
type workload struct {
	obj      Object
	replicas *int32
	selector *metav1.LabelSelector
	template corev1.PodTemplateSpec
}

func workloads(m *Manifests) []workload {
	var out []workload
	for _, o := range m.Objects {
		switch w := o.Obj.(type) {
		case *appsv1.Deployment:
			out = append(out, workload{o, w.Spec.Replicas, w.Spec.Selector, w.Spec.Template})
		case *appsv1.StatefulSet:
			out = append(out, workload{o, w.Spec.Replicas, w.Spec.Selector, w.Spec.Template})
		}
	}
	return out
}

// CheckManifests checks decoded manifests: each manager runs as a workload of several replicas
// whose container reads only variables its binary knows (every required one set, every
// ConfigMap and Secret key it references defined), listens on 0.0.0.0, is probed for readiness
// on /readyz and liveness on /healthz at its admin port, has resource requests and limits, runs
// as non-root on a read-only root, and is covered by a PodDisruptionBudget; Services,
// PodDisruptionBudgets and autoscalers select or target workloads that exist; a manager with a
// per-node identity (NODE_ID) is a StatefulSet whose NODE_ID is its pod's stable name; and
// kustomization.yaml lists exactly the manifest files.
func CheckManifests(m *Manifests, r K8sRules) []Problem {
	ps := &problems{file: r.Dir}
	checkNames(ps, m, r.Namespace)
	ws := workloads(m)
	for _, c := range r.Components {
		if !c.Manager {
			continue
		}
		i := slices.IndexFunc(ws, func(w workload) bool { return w.obj.Meta.Name == c.Name })
		if i < 0 {
			ps.add(c.Name, "no Deployment or StatefulSet runs it")
			continue
		}
		checkWorkload(ps, m, r, c, ws[i])
	}
	for _, o := range m.Objects {
		switch x := o.Obj.(type) {
		case *corev1.Service:
			checkService(ps, o, x, ws)
		case *policyv1.PodDisruptionBudget:
			if len(matching(ws, x.Spec.Selector)) == 0 {
				ps.add(o.ID(), "its selector matches no workload's pods")
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			checkHPA(ps, o, x, ws, r.MinReplicas)
		}
	}
	checkKustomization(ps, m, ws)
	// Name the file of each object a problem is about.
	for i, p := range ps.list {
		if p.Object == "kustomization.yaml" {
			ps.list[i].File, ps.list[i].Object = path.Join(r.Dir, "kustomization.yaml"), ""
			continue
		}
		for _, o := range m.Objects {
			if o.ID() == p.Object {
				ps.list[i].File = path.Join(r.Dir, o.File)
				break
			}
		}
	}
	slices.SortFunc(ps.list, func(a, b Problem) int { return strings.Compare(a.String(), b.String()) })
	return ps.list
}

// matching lists the workloads whose pods the selector selects.
func matching(ws []workload, sel *metav1.LabelSelector) []workload {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || sel == nil || s.Empty() {
		return nil
	}
	var out []workload
	for _, w := range ws {
		if s.Matches(labels.Set(w.template.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func checkWorkload(ps *problems, m *Manifests, r K8sRules, c Component, w workload) {
	id := w.obj.ID()
	// The replica count: the workload's own, or, when an autoscaler owns it, the autoscaler's
	// minimum (a fixed count beside an autoscaler would reset it on every apply).
	if hpaMin, scaled := autoscaled(m, w); scaled {
		if w.replicas != nil {
			ps.add(id, "replicas is set, but a HorizontalPodAutoscaler owns the count: leave it out")
		}
		if hpaMin < r.MinReplicas {
			ps.add(id, "its HorizontalPodAutoscaler's minReplicas is %d; want at least %d", hpaMin, r.MinReplicas)
		}
	} else if w.replicas == nil || *w.replicas < r.MinReplicas {
		got := "unset (1)"
		if w.replicas != nil {
			got = strconv.Itoa(int(*w.replicas))
		}
		ps.add(id, "replicas %s; want at least %d", got, r.MinReplicas)
	}
	if len(matching([]workload{w}, w.selector)) == 0 {
		ps.add(id, "spec.selector does not select its own pod template's labels")
	}
	_, perNode := r.Vars.Lookup(c.Name, "NODE_ID")
	if perNode {
		ss, ok := w.obj.Obj.(*appsv1.StatefulSet)
		if !ok {
			ps.add(id, "%s owns per-node resources (NODE_ID: its own queue, its SIP dialogs); run it as a StatefulSet so each pod keeps its identity", c.Name)
		} else if svc, ok := m.Find("Service", ss.Spec.ServiceName); !ok {
			ps.add(id, "serviceName %q: no such Service", ss.Spec.ServiceName)
		} else if svc.Obj.(*corev1.Service).Spec.ClusterIP != corev1.ClusterIPNone {
			ps.add(id, "serviceName %q is not headless (clusterIP: None)", ss.Spec.ServiceName)
		}
	}

	pod := w.template.Spec
	i := slices.IndexFunc(pod.Containers, func(ct corev1.Container) bool { return ct.Name == c.Name })
	if i < 0 {
		ps.add(id, "no container named %s", c.Name)
		return
	}
	ct := pod.Containers[i]
	if img, _, _ := strings.Cut(ct.Image, ":"); img != "voipbin/"+c.Name {
		ps.add(id, "image %q; want voipbin/%s:<tag> (the image docker-compose.yml builds)", ct.Image, c.Name)
	}
	env := checkEnv(ps, m, r, c, id, ct)
	if perNode {
		if i := slices.IndexFunc(ct.Env, func(e corev1.EnvVar) bool { return e.Name == "NODE_ID" }); i < 0 ||
			ct.Env[i].ValueFrom == nil || ct.Env[i].ValueFrom.FieldRef == nil || ct.Env[i].ValueFrom.FieldRef.FieldPath != "metadata.name" {
			ps.add(id, "NODE_ID must come from the pod's name (fieldRef metadata.name): stable across restarts, unique per pod")
		}
	}

	// Ports and probes: the admin port serves /readyz and /healthz.
	_, adminPort, err := net.SplitHostPort(env["ADMIN_ADDRESS"])
	if err != nil {
		ps.add(id, "ADMIN_ADDRESS %q: the admin port is unknown", env["ADMIN_ADDRESS"])
	}
	for name, v := range env {
		if lv, ok := r.Vars.Lookup(c.Name, name); ok && isListenVar(lv) {
			_, port, _ := net.SplitHostPort(v)
			if !slices.ContainsFunc(ct.Ports, func(p corev1.ContainerPort) bool { return strconv.Itoa(int(p.ContainerPort)) == port }) {
				ps.add(id, "%s=%s: port %s is not among the container's ports", name, v, port)
			}
		}
	}
	checkProbe(ps, id, "readinessProbe", ct.ReadinessProbe, "/readyz", adminPort, ct.Ports)
	checkProbe(ps, id, "livenessProbe", ct.LivenessProbe, "/healthz", adminPort, ct.Ports)

	// Resources.
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := ct.Resources.Requests[res]
		lim, hasLim := ct.Resources.Limits[res]
		if !hasReq {
			ps.add(id, "no %s request", res)
		}
		if !hasLim {
			ps.add(id, "no %s limit", res)
		}
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			ps.add(id, "%s request %s is above its limit %s", res, req.String(), lim.String())
		}
	}

	// Security: non-root (the image's user is 65534), no escalation, read-only root.
	nonRoot := pod.SecurityContext != nil && pod.SecurityContext.RunAsNonRoot != nil && *pod.SecurityContext.RunAsNonRoot
	sc := ct.SecurityContext
	if sc != nil && sc.RunAsNonRoot != nil {
		nonRoot = *sc.RunAsNonRoot
	}
	if !nonRoot {
		ps.add(id, "runAsNonRoot is not true")
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		ps.add(id, "allowPrivilegeEscalation is not false")
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		ps.add(id, "readOnlyRootFilesystem is not true")
	}

	// A PodDisruptionBudget keeps some pods up through node drains.
	var pdbs []Object
	for _, o := range m.Objects {
		if pdb, ok := o.Obj.(*policyv1.PodDisruptionBudget); ok && len(matching([]workload{w}, pdb.Spec.Selector)) == 1 {
			pdbs = append(pdbs, o)
		}
	}
	if len(pdbs) == 0 {
		ps.add(id, "no PodDisruptionBudget selects its pods")
	}
	replicas := int32(1)
	if n, ok := autoscaled(m, w); ok {
		replicas = n
	} else if w.replicas != nil {
		replicas = *w.replicas
	}
	for _, o := range pdbs {
		spec := o.Obj.(*policyv1.PodDisruptionBudget).Spec
		switch {
		case spec.MinAvailable == nil && spec.MaxUnavailable == nil:
			ps.add(o.ID(), "sets neither minAvailable nor maxUnavailable")
		case spec.MinAvailable != nil && spec.MinAvailable.Type == intstr.Int && spec.MinAvailable.IntVal >= replicas:
			ps.add(o.ID(), "minAvailable %d with %d replicas blocks every eviction: node drains would hang", spec.MinAvailable.IntVal, replicas)
		case spec.MaxUnavailable != nil && spec.MaxUnavailable.Type == intstr.Int && spec.MaxUnavailable.IntVal < 1:
			ps.add(o.ID(), "maxUnavailable 0 blocks every eviction: node drains would hang")
		}
	}
}

// autoscaled finds the HorizontalPodAutoscaler targeting w and its minimum (1 when unset).
func autoscaled(m *Manifests, w workload) (int32, bool) {
	for _, o := range m.Objects {
		h, ok := o.Obj.(*autoscalingv2.HorizontalPodAutoscaler)
		if !ok || h.Spec.ScaleTargetRef.Kind != w.obj.Kind || h.Spec.ScaleTargetRef.Name != w.obj.Meta.Name {
			continue
		}
		if h.Spec.MinReplicas == nil {
			return 1, true
		}
		return *h.Spec.MinReplicas, true
	}
	return 0, false
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnv checks the container's environment and returns the values it can know: literals,
// and the binary's defaults for what is unset.
func checkEnv(ps *problems, m *Manifests, r K8sRules, c Component, id string, ct corev1.Container) map[string]string {
	referenced := map[string]bool{}
	for _, e := range ct.Env {
		for _, ref := range envRef.FindAllStringSubmatch(e.Value, -1) {
			referenced[ref[1]] = true
		}
	}
	env := map[string]string{}
	set := map[string]bool{} // set for sure: a literal or a non-optional reference
	for _, e := range ct.Env {
		switch {
		case r.Vars.Known(c.Name, e.Name):
		case referenced[e.Name]:
			// a helper only other values use, like POD_IP in $(POD_IP):5060
		default:
			ps.add(id, "env %s: %s does not read it (`%s vars`)", e.Name, c.Name, c.Name)
		}
		if e.ValueFrom == nil {
			if e.Value != "" {
				env[e.Name], set[e.Name] = e.Value, true
			}
			continue
		}
		if ok, optional := resolveRef(ps, m, id, e.Name, e.ValueFrom); ok && !optional {
			set[e.Name] = true
		}
	}
	for _, ef := range ct.EnvFrom {
		keys, optional := envFromKeys(ps, m, id, ef)
		for _, k := range keys {
			if !r.Vars.Known(c.Name, ef.Prefix+k) {
				ps.add(id, "envFrom: key %s: %s does not read it", ef.Prefix+k, c.Name)
			}
			set[ef.Prefix+k] = set[ef.Prefix+k] || !optional
		}
	}
	for _, v := range r.Vars[c.Name] {
		if v.Required && !set[v.Name] {
			ps.add(id, "env %s is required and not (surely) set", v.Name)
		}
		if isListenVar(v) {
			val, ok := env[v.Name]
			if host, _, err := net.SplitHostPort(val); !ok || err != nil || !wildcard(host) {
				ps.add(id, "env %s must be set to 0.0.0.0:<port> (default %s is unreachable from outside the pod)", v.Name, v.Default)
			}
		}
		if _, ok := env[v.Name]; !ok && !set[v.Name] && v.Default != "" {
			env[v.Name] = v.Default
		}
	}
	return env
}

// resolveRef checks a valueFrom: the ConfigMap or Secret and its key exist (or the reference is
// optional). It reports whether the reference is well formed and whether it is optional.
func resolveRef(ps *problems, m *Manifests, id, name string, vf *corev1.EnvVarSource) (ok, optional bool) {
	switch {
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		optional = ref.Optional != nil && *ref.Optional
		o, found := m.Find("ConfigMap", ref.Name)
		if !found {
			if !optional {
				ps.add(id, "env %s: ConfigMap %q is not defined in the manifests", name, ref.Name)
			}
			return !optional, optional
		}
		if _, has := o.Obj.(*corev1.ConfigMap).Data[ref.Key]; !has && !optional {
			ps.add(id, "env %s: ConfigMap %q has no key %q", name, ref.Name, ref.Key)
			return false, optional
		}
		return true, optional
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		optional = ref.Optional != nil && *ref.Optional
		o, found := m.Find("Secret", ref.Name)
		if !found {
			if !optional {
				ps.add(id, "env %s: Secret %q is not defined in the manifests", name, ref.Name)
			}
			return !optional, optional
		}
		s := o.Obj.(*corev1.Secret)
		_, inData := s.Data[ref.Key]
		_, inString := s.StringData[ref.Key]
		if !inData && !inString && !optional {
			ps.add(id, "env %s: Secret %q has no key %q", name, ref.Name, ref.Key)
			return false, optional
		}
		return true, optional
	case vf.FieldRef != nil, vf.ResourceFieldRef != nil:
		return true, false
	}
	ps.add(id, "env %s: valueFrom names no source", name)
	return false, false
}

func envFromKeys(ps *problems, m *Manifests, id string, ef corev1.EnvFromSource) (keys []string, optional bool) {
	switch {
	case ef.ConfigMapRef != nil:
		optional = ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional
		o, ok := m.Find("ConfigMap", ef.ConfigMapRef.Name)
		if !ok {
			if !optional {
				ps.add(id, "envFrom: ConfigMap %q is not defined in the manifests", ef.ConfigMapRef.Name)
			}
			return nil, optional
		}
		for k := range o.Obj.(*corev1.ConfigMap).Data {
			keys = append(keys, k)
		}
	case ef.SecretRef != nil:
		optional = ef.SecretRef.Optional != nil && *ef.SecretRef.Optional
		o, ok := m.Find("Secret", ef.SecretRef.Name)
		if !ok {
			if !optional {
				ps.add(id, "envFrom: Secret %q is not defined in the manifests", ef.SecretRef.Name)
			}
			return nil, optional
		}
		s := o.Obj.(*corev1.Secret)
		for k := range s.Data {
			keys = append(keys, k)
		}
		for k := range s.StringData {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys, optional
}

// portNumber resolves a probe's or Service's port (a number or a container port's name).
func portNumber(p intstr.IntOrString, ports []corev1.ContainerPort) (string, bool) {
	if p.Type == intstr.Int {
		return strconv.Itoa(int(p.IntVal)), true
	}
	for _, cp := range ports {
		if cp.Name == p.StrVal {
			return strconv.Itoa(int(cp.ContainerPort)), true
		}
	}
	return "", false
}

func checkProbe(ps *problems, id, which string, p *corev1.Probe, wantPath, adminPort string, ports []corev1.ContainerPort) {
	if p == nil || p.HTTPGet == nil {
		ps.add(id, "%s: want httpGet %s on the admin port", which, wantPath)
		return
	}
	if p.HTTPGet.Path != wantPath {
		ps.add(id, "%s: path %q; want %s", which, p.HTTPGet.Path, wantPath)
	}
	port, ok := portNumber(p.HTTPGet.Port, ports)
	switch {
	case !ok:
		ps.add(id, "%s: port %q is no container port", which, p.HTTPGet.Port.String())
	case adminPort != "" && port != adminPort:
		ps.add(id, "%s: port %s; the admin port (ADMIN_ADDRESS) is %s", which, port, adminPort)
	}
}

func checkService(ps *problems, o Object, svc *corev1.Service, ws []workload) {
	if len(svc.Spec.Selector) == 0 {
		ps.add(o.ID(), "no selector")
		return
	}
	targets := matching(ws, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
	if len(targets) == 0 {
		ps.add(o.ID(), "its selector matches no workload's pods")
		return
	}
	for _, sp := range svc.Spec.Ports {
		target := sp.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(sp.Port)
		}
		for _, w := range targets {
			var all []corev1.ContainerPort
			for _, ct := range w.template.Spec.Containers {
				all = append(all, ct.Ports...)
			}
			n, ok := portNumber(target, all)
			if ok && target.Type == intstr.Int {
				ok = slices.ContainsFunc(all, func(p corev1.ContainerPort) bool { return strconv.Itoa(int(p.ContainerPort)) == n })
			}
			if !ok {
				ps.add(o.ID(), "port %s: targetPort %s is not a port of %s", sp.Name, target.String(), w.obj.ID())
			}
		}
	}
}

func checkHPA(ps *problems, o Object, h *autoscalingv2.HorizontalPodAutoscaler, ws []workload, minReplicas int32) {
	ref := h.Spec.ScaleTargetRef
	if !slices.ContainsFunc(ws, func(w workload) bool { return w.obj.Kind == ref.Kind && w.obj.Meta.Name == ref.Name }) {
		ps.add(o.ID(), "scaleTargetRef %s/%s: no such workload", ref.Kind, ref.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < minReplicas {
		ps.add(o.ID(), "minReplicas below %d", minReplicas)
	}
	if h.Spec.MinReplicas != nil && h.Spec.MaxReplicas < *h.Spec.MinReplicas {
		ps.add(o.ID(), "maxReplicas %d is below minReplicas %d", h.Spec.MaxReplicas, *h.Spec.MinReplicas)
	}
}

// checkKustomization wants kustomization.yaml to list every manifest file, and only those, and
// to pin the tag of every voipbin image.
func checkKustomization(ps *problems, m *Manifests, ws []workload) {
	k := m.Kustomization
	if k == nil {
		ps.add("kustomization.yaml", "missing (`kubectl apply -k` applies the directory through it)")
		return
	}
	for _, f := range m.Files {
		if !slices.Contains(k.Resources, f) {
			ps.add("kustomization.yaml", "resources does not list %s", f)
		}
	}
	for _, res := range k.Resources {
		if !slices.Contains(m.Files, path.Clean(res)) {
			ps.add("kustomization.yaml", "resources lists %s, which is not a manifest here", res)
		}
	}
	for _, w := range ws {
		for _, ct := range w.template.Spec.Containers {
			img, _, _ := strings.Cut(ct.Image, ":")
			if strings.HasPrefix(img, "voipbin/") && !slices.ContainsFunc(k.Images, func(i KustomizeImage) bool { return i.Name == img }) {
				ps.add("kustomization.yaml", "images does not set the tag of %s", img)
			}
		}
	}
}
