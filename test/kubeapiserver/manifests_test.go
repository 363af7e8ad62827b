package kubeapiserver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// render builds a kustomization of deploy/k8s as kubectl kustomize does.
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	if !filepath.IsAbs(dir) {
		dir = filepath.Join("..", "..", "deploy", "k8s", dir)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	b, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			break
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
	return out
}

// podSpecs returns the pod templates of the workloads, by workload name.
func podSpecs(t *testing.T, objs []*unstructured.Unstructured) map[string]corev1.PodSpec {
	t.Helper()
	out := map[string]corev1.PodSpec{}
	for _, u := range objs {
		switch u.GetKind() {
		case "StatefulSet":
			var s appsv1.StatefulSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
				t.Fatal(err)
			}
			out[s.Name] = s.Spec.Template.Spec
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &d); err != nil {
				t.Fatal(err)
			}
			out[d.Name] = d.Spec.Template.Spec
		case "CronJob":
			var c batchv1.CronJob
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &c); err != nil {
				t.Fatal(err)
			}
			out[c.Name] = c.Spec.JobTemplate.Spec.Template.Spec
		case "Job":
			var j batchv1.Job
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &j); err != nil {
				t.Fatal(err)
			}
			out[j.Name] = j.Spec.Template.Spec
		}
	}
	return out
}

// checkPods asserts what every Tessera pod must be: unprivileged, no
// service account token, probes, resource requests and memory limits.
func checkPods(t *testing.T, overlay string, pods map[string]corev1.PodSpec) {
	for name, p := range pods {
		where := overlay + "/" + name
		if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken {
			t.Errorf("%s mounts a service account token", where)
		}
		if p.SecurityContext == nil || p.SecurityContext.RunAsNonRoot == nil || !*p.SecurityContext.RunAsNonRoot {
			t.Errorf("%s may run as root", where)
		}
		for _, c := range p.Containers {
			sc := c.SecurityContext
			switch {
			case sc == nil:
				t.Errorf("%s/%s has no securityContext", where, c.Name)
				continue
			case sc.Privileged != nil && *sc.Privileged:
				t.Errorf("%s/%s is privileged", where, c.Name)
			case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
				t.Errorf("%s/%s allows privilege escalation", where, c.Name)
			case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
				t.Errorf("%s/%s has a writable root filesystem", where, c.Name)
			case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0:
				t.Errorf("%s/%s keeps capabilities", where, c.Name)
			}
			if (c.ReadinessProbe == nil || c.LivenessProbe == nil) && p.RestartPolicy != corev1.RestartPolicyNever && p.RestartPolicy != corev1.RestartPolicyOnFailure {
				t.Errorf("%s/%s (a server) lacks a readiness or liveness probe", where, c.Name)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s/%s lacks cpu/memory requests or a memory limit", where, c.Name)
			}
			// Every image tagged, as the overlays' images transformer sets
			// it (kustomize edit set image): an untagged one would not follow.
			if _, tag, ok := strings.Cut(c.Image, ":"); !ok || tag == "" {
				t.Errorf("%s/%s runs the untagged image %q", where, c.Name, c.Image)
			}
		}
	}
}

// TestManifests renders every overlay of deploy/k8s, checks the properties
// an operator relies on, and has a real kube-apiserver (on tessera dev)
// accept every rendered object in a server-side dry run.
func TestManifests(t *testing.T) {
	// The restore component on top of ha, as its README says to apply it.
	deploy, err := filepath.Abs(filepath.Join("..", "..", "deploy", "k8s"))
	if err != nil {
		t.Fatal(err)
	}
	restore := t.TempDir()
	rel := func(p string) string {
		r, err := filepath.Rel(restore, filepath.Join(deploy, p)) // kustomize takes no absolute roots
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := os.WriteFile(filepath.Join(restore, "kustomization.yaml"), []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: tessera\nresources:\n  - "+
		rel("overlays/ha")+"\ncomponents:\n  - "+rel("components/restore")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The monitoring component renders (its kinds are Prometheus
	// Operator CRDs, which this API server lacks, so no dry run).
	monitoring := t.TempDir()
	relTo := func(from, p string) string {
		r, err := filepath.Rel(from, filepath.Join(deploy, p))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := os.WriteFile(filepath.Join(monitoring, "kustomization.yaml"), []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: tessera\nresources:\n  - "+
		relTo(monitoring, "overlays/ha")+"\ncomponents:\n  - "+relTo(monitoring, "components/monitoring")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, u := range render(t, monitoring) {
		kinds[u.GetKind()+"/"+u.GetName()] = true
	}
	for _, want := range []string{"PodMonitor/tessera", "PrometheusRule/tessera", "ConfigMap/tessera-dashboard"} {
		if !kinds[want] {
			t.Errorf("the monitoring component renders no %s", want)
		}
	}
	// The TLS component on top of ha: mutual TLS flags and certificates
	// on every tier (the cert-manager objects get no dry run either).
	tlsDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(tlsDir, "kustomization.yaml"), []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: tessera\nresources:\n  - "+
		relTo(tlsDir, "overlays/ha")+"\ncomponents:\n  - "+relTo(tlsDir, "components/tls")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	withTLS := render(t, tlsDir)
	checkPods(t, "ha+tls", podSpecs(t, withTLS))
	for name, p := range podSpecs(t, withTLS) {
		args := strings.Join(p.Containers[0].Args, " ")
		if !strings.Contains(args, "--peer-cert-file=/tls/peer/tls.crt") && name != "tessera-backup" {
			t.Errorf("with TLS, %s has no peer certificate: %s", name, args)
		}
		if name == "tessera-gateway" && !(strings.Contains(args, "--listen-client-urls=https://") && strings.Contains(args, "--client-cert-auth")) {
			t.Errorf("with TLS, the gateway does not require client certificates over https: %s", args)
		}
		if name == "tessera-backup" && !strings.Contains(args, "--cert=/tls/client/tls.crt") {
			t.Errorf("with TLS, the backup presents no client certificate: %s", args)
		}
	}
	overlays := map[string][]*unstructured.Unstructured{tlsDir: withTLS}
	for _, o := range []string{"overlays/dev", "overlays/ha", "overlays/sharded", restore} {
		overlays[o] = render(t, o)
		if len(overlays[o]) == 0 {
			t.Fatalf("%s renders nothing", o)
		}
		checkPods(t, o, podSpecs(t, overlays[o]))
		for _, u := range overlays[o] {
			switch u.GetKind() {
			case "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding":
				t.Errorf("%s grants Kubernetes API permissions (%s %s): Tessera needs none", o, u.GetKind(), u.GetName())
			}
		}
	}

	ha := overlays["overlays/ha"]
	byName := map[string]*unstructured.Unstructured{}
	for _, u := range ha {
		byName[u.GetKind()+"/"+u.GetName()] = u
	}
	var sts appsv1.StatefulSet
	if u := byName["StatefulSet/tessera-replica"]; u == nil {
		t.Fatal("ha has no replica StatefulSet")
	} else if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &sts); err != nil {
		t.Fatal(err)
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement || len(sts.Spec.VolumeClaimTemplates) == 0 || *sts.Spec.Replicas != 3 {
		t.Errorf("replica StatefulSet: policy %s, %d volume claims, %d replicas", sts.Spec.PodManagementPolicy, len(sts.Spec.VolumeClaimTemplates), *sts.Spec.Replicas)
	}
	aa := sts.Spec.Template.Spec.Affinity
	if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 ||
		aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "kubernetes.io/hostname" ||
		len(aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Errorf("replicas are not kept apart across nodes and zones: %+v", aa)
	}
	for _, want := range []string{"CronJob/tessera-backup", "PersistentVolumeClaim/tessera-backups", "PodDisruptionBudget/tessera-replica", "PodDisruptionBudget/tessera-watcher", "PodDisruptionBudget/tessera-gateway",
		"Service/tessera-replica", "Service/tessera-gateway", "HorizontalPodAutoscaler/tessera-gateway", "ConfigMap/"} {
		found := false
		for k := range byName {
			found = found || k == want || strings.HasSuffix(want, "/") && strings.HasPrefix(k, want)
		}
		if !found {
			t.Errorf("ha renders no %s", want)
		}
	}
	var gw appsv1.Deployment
	if u := byName["Deployment/tessera-gateway"]; u == nil {
		t.Error("ha has no gateway Deployment")
	} else if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &gw); err != nil {
		t.Fatal(err)
	} else if *gw.Spec.Replicas != 3 {
		t.Errorf("ha runs %d gateways, want 3", *gw.Spec.Replicas)
	}
	for _, u := range ha {
		if ns := u.GetNamespace(); u.GetKind() != "Namespace" && ns != "tessera" {
			t.Errorf("ha puts %s %s in namespace %q", u.GetKind(), u.GetName(), ns)
		}
	}

	checkSharded(t, overlays["overlays/sharded"])

	// A server-side dry run of every object on a real kube-apiserver.
	dataDir := t.TempDir()
	client, raft, api, watcher := freePort(t), freePort(t), freePort(t), freePort(t)
	start(t, "tessera", tesseraBin, "dev", "--data-dir", dataDir, "--listen-client-urls", "http://"+client,
		"--raft-address", raft, "--api-address", api, "--watcher-address", watcher)
	a := newAPIServer(t, "http://"+client)
	dc, err := discovery.NewDiscoveryClientForConfig(a.config())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(a.config())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	restored := 0
	for _, u := range overlays[restore] {
		if u.GetKind() == "Job" {
			restored++
		}
	}
	if restored != 3 {
		t.Errorf("the restore component makes %d Jobs, want one per store (3)", restored)
	}
	for o, objs := range overlays {
		for _, u := range objs {
			if u.GroupVersionKind().Group == "cert-manager.io" {
				continue // a CRD this API server does not have
			}
			m, err := mapper.RESTMapping(u.GroupVersionKind().GroupKind(), u.GroupVersionKind().Version)
			if err != nil {
				t.Errorf("%s: %s %s: %v", o, u.GetKind(), u.GetName(), err)
				continue
			}
			var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if u.GetNamespace() != "" {
				ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
			}
			opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
			if u.GetKind() == "Namespace" {
				opts.DryRun = nil // the namespaced objects need it to exist
			}
			if _, err := ri.Create(ctx, u, opts); err != nil && !(u.GetKind() == "Namespace" && apierrors.IsAlreadyExists(err)) {
				t.Errorf("%s: the API server refused %s %s: %v", o, u.GetKind(), u.GetName(), err)
			}
		}
	}
	t.Logf("server-side dry run of %d dev, %d ha, %d sharded, %d ha+restore and %d ha+tls objects", len(overlays["overlays/dev"]), len(ha), len(overlays["overlays/sharded"]), len(overlays[restore]), len(withTLS))
}

// checkSharded: six stores in three per-zone StatefulSets whose pod
// indexes do not overlap, pinned to their zones, every store listed in
// INITIAL_CLUSTER with the zone its set is pinned to, pre-split for
// Kubernetes with replication factor 3, and one disruption budget over all
// six.
func checkSharded(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	var cluster string
	zoneOf := map[int]string{} // store ID → its set's zone
	podOf := map[int]string{}  // store ID → its pod's name
	sets, budgets := 0, 0
	for _, u := range objs {
		switch u.GetKind() {
		case "ConfigMap":
			if strings.HasPrefix(u.GetName(), "tessera-cluster") {
				cluster, _, _ = unstructured.NestedString(u.Object, "data", "INITIAL_CLUSTER")
			}
		case "PodDisruptionBudget":
			if u.GetName() == "tessera-replica" {
				budgets++
			}
		case "StatefulSet":
			var s appsv1.StatefulSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
				t.Fatal(err)
			}
			sets++
			args := strings.Join(s.Spec.Template.Spec.Containers[0].Args, " ")
			zone := s.Spec.Template.Spec.NodeSelector["topology.kubernetes.io/zone"]
			if s.Spec.Ordinals == nil || s.Spec.Replicas == nil || zone == "" ||
				!strings.Contains(args, "--initial-split-keys=kubernetes") || !strings.Contains(args, "--replication-factor=3") {
				t.Errorf("sharded: StatefulSet %s: ordinals %v, zone %q, args %s", s.Name, s.Spec.Ordinals, zone, args)
				continue
			}
			for i := range int(*s.Spec.Replicas) {
				id := int(s.Spec.Ordinals.Start) + i + 1
				if _, dup := zoneOf[id]; dup {
					t.Errorf("sharded: store ID %d in two StatefulSets", id)
				}
				zoneOf[id] = zone
				podOf[id] = fmt.Sprintf("%s-%d", s.Name, id-1)
			}
		}
	}
	if sets != 3 || len(zoneOf) != 6 || budgets != 1 {
		t.Fatalf("sharded: %d StatefulSets, %d stores, %d replica budgets; want 3, 6, 1", sets, len(zoneOf), budgets)
	}
	entries := strings.Split(cluster, ",")
	if len(entries) != 6 {
		t.Fatalf("sharded: INITIAL_CLUSTER has %d stores, want 6: %s", len(entries), cluster)
	}
	for _, e := range entries {
		var id int
		var zone string
		if i := strings.Index(e, "@zone="); i > 0 {
			zone = e[i+len("@zone="):]
		}
		if _, err := fmt.Sscanf(e, "%d=", &id); err != nil || zone == "" || zoneOf[id] != zone || !strings.HasPrefix(e, fmt.Sprintf("%d=%s.", id, podOf[id])) {
			t.Errorf("sharded: INITIAL_CLUSTER entry %q: store %d is pod %s, in zone %q", e, id, podOf[id], zoneOf[id])
		}
	}
}
