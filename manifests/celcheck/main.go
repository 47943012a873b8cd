// celcheck evaluates the matchConditions of kubectl-mesh's MutatingWebhookConfiguration with
// the Kubernetes apiserver's own matcher (k8s.io/apiserver, the release the test environment
// runs). The cases follow the sync rule the configuration records in its annotations
// kubectl-mesh.io/managed-labels and kubectl-mesh.io/excluded-namespaces (what the webhook and
// the plugin's commands apply): for every managed label, a change on CREATE, UPDATE and DELETE
// (no old object on CREATE, no new one on DELETE, no labels map at all) must call the webhook;
// a change of a label the rule does not manage (the default rule's labels it leaves out
// included) must not; nor may a change in an excluded namespace, while a namespace only the
// default rule excludes is synced. Evaluation errors fail the case (the real configuration
// ignores them, which would hide a broken expression).
//
// Inputs are files or "-" for stdin, each YAML (several documents) or JSON (a List too), as
// `kubectl mesh install --dry-run -o yaml` prints them; every MutatingWebhookConfiguration in
// them is checked, and a webhook Deployment beside it must carry the same rule in its
// environment. With -managed-labels / -excluded-namespaces the recorded rule must be exactly
// that one, so a rule that install dropped is not checked as if it were the intended one.
//
//	cd manifests/celcheck && go run . ../webhook.yaml
//	kubectl-mesh install --dry-run -o yaml --managed-labels k1,k2 --excluded-namespaces n1 |
//	    (cd manifests/celcheck && go run . -managed-labels k1,k2 -excluded-namespaces n1,kubectl-mesh -)
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook"
	"k8s.io/apiserver/pkg/cel/environment"
	"sigs.k8s.io/yaml"
)

const (
	managedAnnotation  = "kubectl-mesh.io/managed-labels"
	excludedAnnotation = "kubectl-mesh.io/excluded-namespaces"
	managedEnv         = "MESH_WEBHOOK_MANAGED_LABELS"
	excludedEnv        = "MESH_WEBHOOK_EXCLUDED_NAMESPACES"
	webhookDeployment  = "mesh-webhook"
)

// The default rule (webhook/src/labels.rs): labels it manages that a custom rule leaves out
// must stop calling the webhook, namespaces it excludes that a custom rule does not must
// start to.
var (
	defaultManaged  = []string{"istio-injection", "istio.io/rev", "istio.io/dataplane-mode"}
	defaultExcluded = []string{"kube-system", "kube-public", "kube-node-lease", "kubectl-mesh"}
)

// A label key no rule manages.
const unrelatedLabel = "team"

type rule struct {
	managed, excluded []string
}

type testCase struct {
	name     string
	op       admission.Operation
	old, obj *corev1.Namespace
	want     bool
}

func main() {
	wantManaged := flag.String("managed-labels", "", "the managed labels the configuration must record (comma-separated; any order)")
	wantExcluded := flag.String("excluded-namespaces", "", "the excluded namespaces the configuration must record (comma-separated; any order)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: celcheck [-managed-labels K1,K2] [-excluded-namespaces N1,N2] FILE|- ...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	failed := 0
	for _, input := range flag.Args() {
		n, err := checkInput(input, split(*wantManaged), split(*wantExcluded))
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", input, err)
			failed++
		}
		failed += n
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// checkInput checks every MutatingWebhookConfiguration of one input; returns the failed cases.
func checkInput(input string, wantManaged, wantExcluded []string) (int, error) {
	var data []byte
	var err error
	if input == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(input)
	}
	if err != nil {
		return 0, err
	}
	configurations, deployments, err := objects(data)
	if err != nil {
		return 0, err
	}
	if len(configurations) == 0 {
		return 0, errors.New("no MutatingWebhookConfiguration found")
	}
	failed := 0
	for _, mwc := range configurations {
		r, err := recordedRule(mwc)
		if err != nil {
			return failed, err
		}
		if wantManaged != nil && !sameSet(r.managed, wantManaged) {
			return failed, fmt.Errorf("%s records managed labels %v, expected %v", mwc.Name, r.managed, wantManaged)
		}
		if wantExcluded != nil && !sameSet(r.excluded, wantExcluded) {
			return failed, fmt.Errorf("%s records excluded namespaces %v, expected %v", mwc.Name, r.excluded, wantExcluded)
		}
		for _, d := range deployments {
			if err := sameRuleInEnv(d, r); err != nil {
				return failed, err
			}
		}
		fmt.Printf("%s: %s: managed %v; excluded %v\n", input, mwc.Name, r.managed, r.excluded)
		n, err := checkConfiguration(mwc, cases(r))
		if err != nil {
			return failed, err
		}
		failed += n
	}
	return failed, nil
}

// objects decodes a YAML stream or JSON document (a List's items included) and keeps the
// webhook configurations and the webhook Deployment.
func objects(data []byte) ([]admissionregistrationv1.MutatingWebhookConfiguration, []appsv1.Deployment, error) {
	var configurations []admissionregistrationv1.MutatingWebhookConfiguration
	var deployments []appsv1.Deployment
	var add func(doc []byte) error
	add = func(doc []byte) error {
		var head struct {
			Kind  string            `json:"kind"`
			Items []json.RawMessage `json:"items"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return err
		}
		switch head.Kind {
		case "List":
			for _, item := range head.Items {
				if err := add(item); err != nil {
					return err
				}
			}
		case "MutatingWebhookConfiguration":
			var mwc admissionregistrationv1.MutatingWebhookConfiguration
			if err := yaml.UnmarshalStrict(doc, &mwc); err != nil {
				return err
			}
			configurations = append(configurations, mwc)
		case "Deployment":
			var d appsv1.Deployment
			if err := yaml.Unmarshal(doc, &d); err != nil {
				return err
			}
			if d.Name == webhookDeployment {
				deployments = append(deployments, d)
			}
		}
		return nil
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return configurations, deployments, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		if err := add(doc); err != nil {
			return nil, nil, err
		}
	}
}

func split(list string) []string {
	if list == "" {
		return nil
	}
	var out []string
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func recordedRule(mwc admissionregistrationv1.MutatingWebhookConfiguration) (rule, error) {
	managed, ok := mwc.Annotations[managedAnnotation]
	if !ok {
		return rule{}, fmt.Errorf("%s has no annotation %s", mwc.Name, managedAnnotation)
	}
	excluded, ok := mwc.Annotations[excludedAnnotation]
	if !ok {
		return rule{}, fmt.Errorf("%s has no annotation %s", mwc.Name, excludedAnnotation)
	}
	r := rule{managed: split(managed), excluded: split(excluded)}
	if len(r.managed) == 0 {
		return rule{}, fmt.Errorf("%s manages no label", mwc.Name)
	}
	return r, nil
}

// sameRuleInEnv: the webhook Deployment passes the rule to mesh-webhook in its environment.
func sameRuleInEnv(d appsv1.Deployment, r rule) error {
	for _, c := range d.Spec.Template.Spec.Containers {
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if !sameSet(split(env[managedEnv]), r.managed) || !sameSet(split(env[excludedEnv]), r.excluded) {
			return fmt.Errorf("Deployment %s runs the webhook with %s=%q %s=%q, the configuration records managed %v excluded %v",
				d.Name, managedEnv, env[managedEnv], excludedEnv, env[excludedEnv], r.managed, r.excluded)
		}
	}
	return nil
}

func ns(name string, labels map[string]string) *corev1.Namespace {
	n := &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: name}}
	if labels != nil {
		n.Labels = labels
	}
	return n
}

// labels of a namespace: the apiserver always sets kubernetes.io/metadata.name.
func labels(name string, kv ...string) map[string]string {
	m := map[string]string{"kubernetes.io/metadata.name": name}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// cases derives what the conditions must select from the rule.
func cases(r rule) []testCase {
	c := admission.Create
	u := admission.Update
	d := admission.Delete
	// A namespace the rule syncs.
	synced := "shop"
	for slices.Contains(r.excluded, synced) {
		synced += "x"
	}
	L := func(kv ...string) map[string]string { return labels(synced, kv...) }
	N := func(l map[string]string) *corev1.Namespace { return ns(synced, l) }

	var out []testCase
	add := func(name string, op admission.Operation, old, obj *corev1.Namespace, want bool) {
		out = append(out, testCase{name, op, old, obj, want})
	}
	for _, k := range r.managed {
		add("create with "+k, c, nil, N(L(k, "enabled")), true)
		add("update add "+k, u, N(L()), N(L(k, "enabled")), true)
		add("update add "+k+" from nil map", u, N(nil), N(L(k, "enabled")), true)
		add("update add empty "+k, u, N(L()), N(L(k, "")), true)
		add("update change "+k, u, N(L(k, "a")), N(L(k, "b")), true)
		add("update remove "+k, u, N(L(k, "enabled")), N(L()), true)
		add("update remove "+k+" to nil map", u, N(L(k, "enabled")), N(nil), true)
		add("delete with "+k, d, N(L(k, "enabled")), nil, true)
	}
	first := r.managed[0]
	add("create no labels map", c, nil, N(nil), false)
	add("create no managed label", c, nil, N(L()), false)
	add("update nothing", u, N(nil), N(nil), false)
	add("update no managed label", u, N(L(first, "x")), N(L(first, "x", "note", "y")), false)
	add("delete no managed label", d, N(L()), nil, false)
	add("delete nil map", d, N(nil), nil, false)

	unmanaged := []string{unrelatedLabel}
	for _, k := range defaultManaged {
		if !slices.Contains(r.managed, k) {
			unmanaged = append(unmanaged, k)
		}
	}
	for _, k := range unmanaged {
		add("create with unmanaged "+k, c, nil, N(L(k, "x")), false)
		add("update add unmanaged "+k, u, N(L(first, "enabled")), N(L(first, "enabled", k, "x")), false)
		add("update change unmanaged "+k, u, N(L(k, "a")), N(L(k, "b")), false)
		add("update remove unmanaged "+k, u, N(L(k, "a")), N(L()), false)
		add("delete with unmanaged "+k, d, N(L(k, "x")), nil, false)
	}

	for _, e := range r.excluded {
		E := func(kv ...string) *corev1.Namespace { return ns(e, labels(e, kv...)) }
		add("excluded "+e+" create", c, nil, E(first, "enabled"), false)
		add("excluded "+e+" update", u, E(), E(first, "enabled"), false)
		add("excluded "+e+" delete", d, E(first, "enabled"), nil, false)
	}
	for _, e := range defaultExcluded {
		if !slices.Contains(r.excluded, e) {
			add("synced "+e+" (excluded by default only)", u, ns(e, labels(e)), ns(e, labels(e, first, "enabled")), true)
		}
	}
	return out
}

// checkConfiguration runs the cases against the first webhook of mwc; returns the failures.
func checkConfiguration(mwc admissionregistrationv1.MutatingWebhookConfiguration, cases []testCase) (int, error) {
	if len(mwc.Webhooks) == 0 {
		return 0, fmt.Errorf("%s has no webhook", mwc.Name)
	}
	hook := mwc.Webhooks[0]
	if len(hook.MatchConditions) == 0 {
		return 0, fmt.Errorf("%s has no matchConditions: every namespace edit would call the webhook", mwc.Name)
	}
	fail := admissionregistrationv1.Fail
	hook.FailurePolicy = &fail // surface evaluation errors instead of skipping
	acc := webhook.NewMutatingWebhookAccessor("uid", mwc.Name, &hook)
	compiler := cel.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	matcher := acc.GetCompiledMatcher(compiler)

	failed := 0
	for _, c := range cases {
		var obj, old runtime.Object
		name := ""
		if c.obj != nil {
			obj, name = c.obj, c.obj.Name
		}
		if c.old != nil {
			old, name = c.old, c.old.Name
		}
		gvk := schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}
		attrs := admission.NewAttributesRecord(obj, old, gvk, "", name, schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", c.op, nil, false, nil)
		va := &admission.VersionedAttributes{Attributes: attrs, VersionedObject: obj, VersionedOldObject: old, VersionedKind: gvk}
		r := matcher.Match(context.Background(), va, nil, nil)
		ok := r.Error == nil && r.Matches == c.want
		if !ok {
			failed++
		}
		fmt.Printf("%-5v %-56s matches=%v want=%v failed=%q err=%v\n", ok, c.name, r.Matches, c.want, r.FailedConditionName, r.Error)
	}
	fmt.Printf("%d passed, %d failed\n", len(cases)-failed, failed)
	return failed, nil
}
