package check

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Object is one decoded manifest document.
type Object struct {
	File string // relative to the directory loaded
	Doc  int    // its position in the file, from 1
	Kind string
	Meta metav1.ObjectMeta
	// Obj is a pointer to the typed object: *appsv1.Deployment, *corev1.ConfigMap, …
	Obj any
}

// ID is "Kind/name", for Problems.
func (o Object) ID() string { return o.Kind + "/" + o.Meta.Name }

// kinds are the object types a manifest may hold, by apiVersion and kind. Anything else is an
// error: a typo in either would otherwise pass unnoticed until kubectl apply.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, true
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1 Secret":
		return &corev1.Secret{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, true
	case "networking/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "networking/v1 Ingress":
		return &networkingv1.Ingress{}, true
	}
	return nil, false
}

// Kustomization is the part of kustomization.yaml the manifests use.
type Kustomization struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Namespace  string            `json:"namespace,omitempty"`
	Resources  []string          `json:"resources"`
	Labels     []KustomizeLabels `json:"labels,omitempty"`
	Images     []KustomizeImage  `json:"images,omitempty"`
}

// KustomizeLabels adds labels to every object.
type KustomizeLabels struct {
	Pairs            map[string]string `json:"pairs"`
	IncludeSelectors bool              `json:"includeSelectors,omitempty"`
	IncludeTemplates bool              `json:"includeTemplates,omitempty"`
}

// KustomizeImage sets an image's name or tag.
type KustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

// Manifests is every object under a directory, and its kustomization.yaml if any.
type Manifests struct {
	Objects       []Object
	Kustomization *Kustomization
	Files         []string // the manifest files, relative, sorted (kustomization.yaml excluded)
}

// LoadManifests decodes every *.yaml and *.yml file under dir into typed objects, strictly:
// a syntax error, an unknown apiVersion/kind, an unknown or duplicate field, or a value of the
// wrong type (a quantity that does not parse, a string for a number) is an error naming the
// file and document. Every problem of every file is reported, joined.
func LoadManifests(dir string) (*Manifests, error) {
	m := &Manifests{}
	var errs []error
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		ext := filepath.Ext(p)
		if d.IsDir() || (ext != ".yaml" && ext != ".yml") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if filepath.Base(p) == "kustomization.yaml" || filepath.Base(p) == "kustomization.yml" {
			var k Kustomization
			if err := yaml.UnmarshalStrict(data, &k); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", rel, err))
			} else if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
				errs = append(errs, fmt.Errorf("%s: apiVersion %q kind %q; want kustomize.config.k8s.io/v1beta1 Kustomization", rel, k.APIVersion, k.Kind))
			} else {
				m.Kustomization = &k
			}
			return nil
		}
		m.Files = append(m.Files, rel)
		objs, err := decodeManifest(rel, data)
		errs = append(errs, err)
		m.Objects = append(m.Objects, objs...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(m.Files)
	if len(m.Files) == 0 {
		errs = append(errs, fmt.Errorf("%s: no manifests", dir))
	}
	return m, errors.Join(errs...)
}

func decodeManifest(file string, data []byte) ([]Object, error) {
	var out []Object
	var errs []error
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("%s: document %d: %w", file, doc, err)
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(raw, &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", file, doc, err))
			continue
		}
		obj, ok := newObject(tm.APIVersion, tm.Kind)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: document %d: apiVersion %q kind %q is not one the checks know", file, doc, tm.APIVersion, tm.Kind))
			continue
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d (%s): %w", file, doc, tm.Kind, err))
			continue
		}
		meta, _ := objectMeta(obj)
		out = append(out, Object{File: file, Doc: doc, Kind: tm.Kind, Meta: meta, Obj: obj})
	}
	return out, errors.Join(errs...)
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range strings.Split(string(doc), "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.Bytes()
}

func objectMeta(obj any) (metav1.ObjectMeta, bool) {
	if o, ok := obj.(interface{ GetObjectMeta() metav1.Object }); ok {
		m := o.GetObjectMeta()
		return metav1.ObjectMeta{Name: m.GetName(), Namespace: m.GetNamespace(), Labels: m.GetLabels(),
			Annotations: m.GetAnnotations()}, true
	}
	return metav1.ObjectMeta{}, false
}

// Find returns the object of that kind and name.
func (m *Manifests) Find(kind, name string) (Object, bool) {
	for _, o := range m.Objects {
		if o.Kind == kind && o.Meta.Name == name {
			return o, true
		}
	}
	return Object{}, false
}

// checkNames validates every object's name and namespace and finds duplicates.
func checkNames(ps *problems, m *Manifests, namespace string) {
	seen := map[string]string{}
	for _, o := range m.Objects {
		where := fmt.Sprintf("%s#%d", o.File, o.Doc)
		if prev, dup := seen[o.ID()]; dup {
			ps.add(o.ID(), "defined twice (%s and %s)", prev, where)
		}
		seen[o.ID()] = where
		for _, msg := range validation.IsDNS1123Subdomain(o.Meta.Name) {
			ps.add(o.ID(), "name %q: %s", o.Meta.Name, msg)
		}
		if o.Kind == "Namespace" {
			continue
		}
		if o.Meta.Namespace != namespace {
			ps.add(o.ID(), "namespace %q; want %q", o.Meta.Namespace, namespace)
		}
	}
	if namespace != "" {
		if _, ok := m.Find("Namespace", namespace); !ok {
			ps.add("Namespace/"+namespace, "missing: the objects live in it")
		}
	}
}
