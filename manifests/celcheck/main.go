// celcheck evaluates the matchConditions of manifests/webhook.yaml with the Kubernetes
// apiserver's own matcher (k8s.io/apiserver, the release the test environment runs) on the
// cases that matter: CREATE without an old object, DELETE without a new one, namespaces with
// no labels map, unrelated label edits, excluded namespaces. Evaluation errors fail the case
// (the real configuration ignores them, which would hide a broken expression).
//
//	cd manifests/celcheck && go run . ../webhook.yaml
package main

import (
	"context"
	"fmt"
	"os"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook"
	"k8s.io/apiserver/pkg/cel/environment"
	"sigs.k8s.io/yaml"
)

func ns(name string, labels map[string]string) *corev1.Namespace {
	if labels == nil {
		return &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: name}}
	}
	return &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.Unmarshal(data, &mwc); err != nil {
		panic(err)
	}
	hook := mwc.Webhooks[0]
	fail := admissionregistrationv1.Fail
	hook.FailurePolicy = &fail // surface evaluation errors instead of skipping
	acc := webhook.NewMutatingWebhookAccessor("uid", mwc.Name, &hook)
	compiler := cel.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	matcher := acc.GetCompiledMatcher(compiler)

	L := func(kv ...string) map[string]string {
		m := map[string]string{"kubernetes.io/metadata.name": "x"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	type tc struct {
		name     string
		op       admission.Operation
		old, obj *corev1.Namespace
		want     bool
	}
	cases := []tc{
		{"create with injection", admission.Create, nil, ns("a", L("istio-injection", "enabled")), true},
		{"create with rev", admission.Create, nil, ns("a", L("istio.io/rev", "1-24")), true},
		{"create no labels map", admission.Create, nil, ns("a", nil), false},
		{"create unrelated label", admission.Create, nil, ns("a", L("team", "x")), false},
		{"update add label", admission.Update, ns("a", L()), ns("a", L("istio-injection", "enabled")), true},
		{"update add label from nil map", admission.Update, ns("a", nil), ns("a", L("istio.io/dataplane-mode", "ambient")), true},
		{"update change value", admission.Update, ns("a", L("istio.io/rev", "a")), ns("a", L("istio.io/rev", "b")), true},
		{"update remove label", admission.Update, ns("a", L("istio-injection", "enabled")), ns("a", L()), true},
		{"update remove to nil map", admission.Update, ns("a", L("istio-injection", "enabled")), ns("a", nil), true},
		{"update unrelated", admission.Update, ns("a", L("istio-injection", "enabled")), ns("a", L("istio-injection", "enabled", "team", "y")), false},
		{"update empty value added", admission.Update, ns("a", L()), ns("a", L("istio-injection", "")), true},
		{"update nothing", admission.Update, ns("a", nil), ns("a", nil), false},
		{"delete with label", admission.Delete, ns("a", L("istio-injection", "enabled")), nil, true},
		{"delete without", admission.Delete, ns("a", L()), nil, false},
		{"delete nil map", admission.Delete, ns("a", nil), nil, false},
		{"excluded kube-system", admission.Update, ns("kube-system", L()), ns("kube-system", L("istio-injection", "enabled")), false},
		{"excluded mesh ns", admission.Create, nil, ns("kubectl-mesh", L("istio-injection", "enabled")), false},
	}
	failed := 0
	for _, c := range cases {
		name := "a"
		if c.obj != nil {
			name = c.obj.Name
		} else {
			name = c.old.Name
		}
		var obj, old runtime.Object
		if c.obj != nil {
			obj = c.obj
		}
		if c.old != nil {
			old = c.old
		}
		gvk := schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}
		attrs := admission.NewAttributesRecord(obj, old, gvk, "", name, schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", c.op, nil, false, nil)
		va := &admission.VersionedAttributes{Attributes: attrs, VersionedObject: obj, VersionedOldObject: old, VersionedKind: gvk}
		r := matcher.Match(context.Background(), va, nil, nil)
		ok := r.Error == nil && r.Matches == c.want
		if !ok {
			failed++
		}
		fmt.Printf("%-5v %-32s matches=%v want=%v failed=%q err=%v\n", ok, c.name, r.Matches, c.want, r.FailedConditionName, r.Error)
	}
	fmt.Printf("%d passed, %d failed\n", len(cases)-failed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
