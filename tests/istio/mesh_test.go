package istio

// Shared pieces: rendering with the current wasmpack, splitting and validating what it renders
// with Istio's own validation, fixture workloads, and an in-process istiod (FakeDiscoveryServer).

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"sigs.k8s.io/yaml"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pilot/test/xdstest"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/test"
)

// An example digest, as manifests/render.sh uses: istiod copies it, it never resolves it.
const (
	digest = "4f3c1e8a2b7d9c0e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e"
	image  = "registry.example.com/ai/model-router@sha256:" + digest
	// The name both halves of the EnvoyFilter pair use for the ECDS entry (NAMESPACE.NAME).
	ecdsName = "ai.model-router"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// wasmpack runs the project's CLI (WASMPACK, default target/debug/wasmpack) and returns stdout.
func wasmpack(t *testing.T, config string, args ...string) string {
	t.Helper()
	bin := os.Getenv("WASMPACK")
	if bin == "" {
		bin = filepath.Join(repoRoot(t), "target/debug/wasmpack")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no wasmpack binary at %s (cargo build -p wasmpack, or set WASMPACK): %v", bin, err)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	full := append([]string{"manifests", "--config", cfg, "--image", image, "--offline"}, args...)
	cmd := exec.Command(bin, full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("wasmpack %s: %v\n%s", strings.Join(full, " "), err, errb.String())
	}
	return out.String()
}

type doc struct {
	Kind, APIVersion, Name, Namespace string
	Text                              string
}

func splitDocs(t *testing.T, s string) []doc {
	t.Helper()
	var docs []doc
	for _, part := range strings.Split(s, "\n---\n") {
		var head struct {
			Kind       string `json:"kind"`
			APIVersion string `json:"apiVersion"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(part), &head); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, part)
		}
		if head.Kind == "" {
			continue
		}
		docs = append(docs, doc{head.Kind, head.APIVersion, head.Metadata.Name, head.Metadata.Namespace, part})
	}
	return docs
}

func kinds(docs []doc) []string {
	var out []string
	for _, d := range docs {
		out = append(out, d.Kind+"/"+d.Name)
	}
	return out
}

// Kinds istiod reads (ConfigString); the rest (HPA, ConfigMap, NetworkPolicy) are not Istio's.
var istioKinds = []string{
	"EnvoyFilter", "WasmPlugin", "TrafficExtension", "VirtualService", "DestinationRule",
	"ServiceEntry", "AuthorizationPolicy", "HTTPRoute", "Gateway", "GatewayClass",
}

// Kinds Istio's controllers read from Kubernetes (the fake kube client's CRDs plus core kinds).
var kubeKinds = []string{
	"Service", "Pod", "EndpointSlice", "Namespace", "ServiceAccount",
	"Gateway", "GatewayClass", "HTTPRoute", "AuthorizationPolicy", "ServiceEntry",
}

func join(docs []doc, keep []string) string {
	var parts []string
	for _, d := range docs {
		if slices.Contains(keep, d.Kind) {
			parts = append(parts, d.Text)
		}
	}
	return strings.Join(parts, "\n---\n")
}

// validate runs Istio's own validation (the one its webhook and `istioctl validate` run) on every
// rendered object istiod reads: a render Istio rejects fails the test; warnings are logged.
func validate(t *testing.T, docs []doc) {
	t.Helper()
	for _, d := range docs {
		if !slices.Contains(istioKinds, d.Kind) {
			continue
		}
		configs, unknown, err := crd.ParseInputs(d.Text)
		if err != nil {
			t.Errorf("Istio cannot parse %s/%s: %v", d.Kind, d.Name, err)
			continue
		}
		if len(configs) != 1 {
			t.Errorf("Istio does not know %s/%s (%s): unknown %v", d.Kind, d.Name, d.APIVersion, unknown)
			continue
		}
		c := configs[0]
		schema, ok := collections.All.FindByGroupVersionAliasesKind(c.GroupVersionKind)
		if !ok {
			t.Errorf("no Istio schema for %v", c.GroupVersionKind)
			continue
		}
		warn, err := schema.ValidateConfig(c)
		if err != nil {
			t.Errorf("Istio rejects %s/%s: %v", d.Kind, d.Name, err)
		}
		if warn != nil {
			t.Logf("Istio warns on %s/%s: %v", d.Kind, d.Name, warn)
		}
	}
}

// Istio-only filters off, through istiod's own settings, so that the config runs in plain Envoy:
// no metadata exchange (PILOT_ENABLE_METADATA_EXCHANGE=false), no istio.alpn HTTP filter
// (PILOT_ENABLE_ALPN_FILTER=false), and the default mesh config has no
// telemetry default provider (no istio.stats filter).
func istiod(t *testing.T, docs []doc, fixtures string) *xds.FakeDiscoveryServer {
	t.Helper()
	test.SetForTest(t, &features.MetadataExchange, false)
	test.SetForTest(t, &features.ALPNFilter, false)
	all := splitDocs(t, fixtures)
	for _, d := range docs {
		all = append(all, apiServerDefaults(t, d))
	}
	m := mesh.DefaultMeshConfig()
	return xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		ConfigString:           join(all, istioKinds),
		KubernetesObjectString: join(all, kubeKinds),
		MeshConfig:             m,
	})
}

func pod(name, ns, sa, ip string, labels map[string]string) string {
	var l []string
	for k, v := range labels {
		l = append(l, fmt.Sprintf("    %s: %q", k, v))
	}
	slices.Sort(l)
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
%s
spec:
  serviceAccountName: %s
  containers: [{name: app, image: app}]
status:
  phase: Running
  podIP: %s
  podIPs: [{ip: %s}]
  conditions: [{type: Ready, status: "True"}]
`, name, ns, strings.Join(l, "\n"), sa, ip, ip)
}

// service with one HTTP port and an EndpointSlice over the given pods (name → IP).
func service(name, ns, clusterIP string, port int, selector string, pods map[string]string) string {
	var eps []string
	for p, ip := range pods {
		eps = append(eps, fmt.Sprintf("- addresses: [%s]\n  conditions: {ready: true}\n  targetRef: {kind: Pod, name: %s, namespace: %s}", ip, p, ns))
	}
	slices.Sort(eps)
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  clusterIP: %[3]s
  selector: {%[5]s}
  ports:
  - name: http
    port: %[4]d
    targetPort: %[4]d
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[1]s-1
  namespace: %[2]s
  labels: {kubernetes.io/service-name: %[1]s}
addressType: IPv4
ports:
- {name: http, port: %[4]d, protocol: TCP}
endpoints:
%[6]s
`, name, ns, clusterIP, port, selector, strings.Join(eps, "\n"))
}

func sidecar(s *xds.FakeDiscoveryServer, name, ns, sa, ip string, labels map[string]string) *model.Proxy {
	return s.SetupProxy(&model.Proxy{
		Type:            model.SidecarProxy,
		ID:              name + "." + ns,
		ConfigNamespace: ns,
		IPAddresses:     []string{ip},
		Labels:          labels,
		Metadata: &model.NodeMetadata{
			Namespace:      ns,
			ServiceAccount: sa,
			Labels:         labels,
			ClusterID:      "Kubernetes",
			IstioVersion:   "1.30.0",
		},
	})
}

// httpFilters lists the HTTP filter names of every HTTP filter chain of a listener.
func httpFilters(t *testing.T, l *listener.Listener) [][]string {
	t.Helper()
	var out [][]string
	chains := append([]*listener.FilterChain{}, l.FilterChains...)
	if l.DefaultFilterChain != nil {
		chains = append(chains, l.DefaultFilterChain)
	}
	for _, fc := range chains {
		_, hf := xdstest.ExtractFilterNames(t, fc)
		if len(hf) > 0 {
			out = append(out, hf)
		}
	}
	return out
}

// listenersWith names the listeners (and filter chains) whose HTTP filters contain `filter`.
func listenersWith(t *testing.T, ls []*listener.Listener, filter string) []string {
	t.Helper()
	var out []string
	for _, l := range ls {
		chains := append([]*listener.FilterChain{}, l.FilterChains...)
		if l.DefaultFilterChain != nil {
			chains = append(chains, l.DefaultFilterChain)
		}
		for _, fc := range chains {
			_, hf := xdstest.ExtractFilterNames(t, fc)
			if slices.Contains(hf, filter) {
				out = append(out, l.Name+"/"+fc.Name)
			}
		}
	}
	return out
}

// apiServerDefaults applies what the Kubernetes API server adds to an object from its CRD's
// defaults before any controller reads it, where Istio's controllers rely on it: an HTTPRoute
// match without `path` is stored as `path: {type: PathPrefix, value: /}` (the Gateway API CRD
// default; Istio's converter dereferences it). The fake kube client does no defaulting.
func apiServerDefaults(t *testing.T, d doc) doc {
	t.Helper()
	if d.Kind != "HTTPRoute" {
		return d
	}
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(d.Text), &obj); err != nil {
		t.Fatal(err)
	}
	spec, _ := obj["spec"].(map[string]any)
	rules, _ := spec["rules"].([]any)
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		matches, _ := rule["matches"].([]any)
		for _, m := range matches {
			match, _ := m.(map[string]any)
			if match != nil && match["path"] == nil {
				match["path"] = map[string]any{"type": "PathPrefix", "value": "/"}
			}
		}
	}
	b, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	d.Text = string(b)
	return d
}
