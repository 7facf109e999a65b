package istio

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	wasm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pilot/test/xdstest"
)

// The callers' sidecars (`--selector app=client`) with body routing: the EnvoyFilter pair, a
// DestinationRule and VirtualService for the model host, an AuthorizationPolicy on the model pods.
const sidecarConfig = `bodyRouting: true
onUnknownModel: reject
maxBodyBytes: 8388608
models:
  - name: llama
    allow: ["spiffe://cluster.local/ns/ai/sa/client"]
    limits: {tokensPerMinute: 100000, by: principal}
    destinations:
      - {name: llama-v1, weight: 50, host: llama.ai.svc.cluster.local, subset: v1, port: 8000}
      - {name: llama-v2, weight: 50, host: llama.ai.svc.cluster.local, subset: v2, port: 8000}
  - name: private
    allow: ["spiffe://cluster.local/ns/ops/*"]
    destinations:
      - {name: private, host: llama.ai.svc.cluster.local, subset: v1, port: 8000}
`

func sidecarFixtures() string {
	return strings.Join([]string{
		pod("client", "ai", "client", "10.0.0.2", map[string]string{"app": "client"}),
		pod("other", "ai", "other", "10.0.0.3", map[string]string{"app": "other"}),
		pod("llama-v1", "ai", "llama", "10.0.0.11", map[string]string{"app": "llama", "version": "v1"}),
		pod("llama-v2", "ai", "llama", "10.0.0.12", map[string]string{"app": "llama", "version": "v2"}),
		service("llama", "ai", "10.96.0.10", 8000, "app: llama", map[string]string{"llama-v1": "10.0.0.11", "llama-v2": "10.0.0.12"}),
		service("client", "ai", "10.96.0.20", 9000, "app: client", map[string]string{"client": "10.0.0.2"}),
	}, "\n---\n")
}

func renderSidecar(t *testing.T) []doc {
	t.Helper()
	docs := splitDocs(t, wasmpack(t, sidecarConfig, "--namespace", "ai", "--selector", "app=client",
		"--allow-principal", "cluster.local/ns/ai/sa/client"))
	want := []string{"EnvoyFilter/model-router-extension", "EnvoyFilter/model-router",
		"DestinationRule/model-router-llama", "VirtualService/model-router-llama",
		"AuthorizationPolicy/model-router-llama-callers", "EnvoyFilter/model-router-buffer-limit"}
	for _, w := range want {
		if !slices.Contains(kinds(docs), w) {
			t.Fatalf("the render has no %s: %v", w, kinds(docs))
		}
	}
	return docs
}

// ecds returns the Wasm config istiod serves over ECDS under `name` to `proxy`.
func ecds(t *testing.T, s *xds.FakeDiscoveryServer, proxyLabels map[string]string, name string) *wasm.Wasm {
	return ecdsFor(t, s, sidecar(s, "client", "ai", "client", "10.0.0.2", proxyLabels), name)
}

func ecdsFor(t *testing.T, s *xds.FakeDiscoveryServer, p *model.Proxy, name string) *wasm.Wasm {
	t.Helper()
	ecs := s.ConfigGen.BuildExtensionConfiguration(p, s.PushContext(), []string{name}, nil)
	if len(ecs) != 1 {
		t.Fatalf("istiod serves %d ECDS entries named %s", len(ecs), name)
	}
	return xdstest.UnmarshalAny[wasm.Wasm](t, ecs[0].TypedConfig)
}

func TestSidecarRenderThroughIstiod(t *testing.T) {
	docs := renderSidecar(t)
	validate(t, docs)
	s := istiod(t, docs, sidecarFixtures())

	client := sidecar(s, "client", "ai", "client", "10.0.0.2", map[string]string{"app": "client"})
	other := sidecar(s, "other", "ai", "other", "10.0.0.3", map[string]string{"app": "other"})
	model := sidecar(s, "llama-v1", "ai", "llama", "10.0.0.11", map[string]string{"app": "llama", "version": "v1"})

	// The HTTP_FILTER patch: in the outbound listener of the model port, right before the router,
	// after Istio's own filters; nowhere else (not inbound, not other ports, not other workloads).
	ls := s.Listeners(client)
	got := listenersWith(t, ls, ecdsName)
	if len(got) == 0 {
		t.Fatalf("the filter is in no listener of the selected sidecar; listeners: %v", xdstest.ExtractListenerNames(ls))
	}
	for _, g := range got {
		if !strings.HasPrefix(g, "0.0.0.0_8000/") {
			t.Errorf("the filter is in %s, want only the outbound listener of port 8000", g)
		}
	}
	out := xdstest.ExtractListener("0.0.0.0_8000", ls)
	for _, hf := range httpFilters(t, out) {
		i := slices.Index(hf, ecdsName)
		if i < 0 || i+1 >= len(hf) || hf[i+1] != "envoy.filters.http.router" {
			t.Errorf("the filter is not right before the router: %v", hf)
		}
		t.Logf("outbound 8000 HTTP filters: %v", hf)
	}
	for _, p := range []struct {
		name string
		ls   []string
	}{{"other", listenersWith(t, s.Listeners(other), ecdsName)}, {"llama-v1", listenersWith(t, s.Listeners(model), ecdsName)}} {
		if len(p.ls) != 0 {
			t.Errorf("the filter is in %s's listeners %v, outside the selector", p.name, p.ls)
		}
	}

	// The LISTENER MERGE patch: the outbound listener of the model port holds 8 MiB bodies, the
	// selected workload's other listeners and other workloads keep Envoy's default.
	checkBufferLimit(t, ls, "0.0.0.0_8000", 8388608)
	checkBufferLimit(t, s.Listeners(other), "0.0.0.0_8000", 0)

	// The EXTENSION_CONFIG patch → the ECDS entry the filter references.
	w := ecds(t, s, map[string]string{"app": "client"}, ecdsName)
	checkWasm(t, w, true)
	var cfg map[string]any
	if err := json.Unmarshal([]byte(stringValue(t, w)), &cfg); err != nil {
		t.Fatalf("plugin configuration: %v", err)
	}
	if cfg["identitySource"] != "workload" || cfg["bodyRouting"] != true {
		t.Errorf("plugin configuration: %v", cfg)
	}

	// VirtualService → header routes to outbound|PORT|SUBSET|HOST, then the unrouted fallback.
	checkRoutes(t, s.Routes(client), "8000", "llama.ai.svc.cluster.local:8000", []string{
		"x-ai-route=llama-v1 -> outbound|8000|v1|llama.ai.svc.cluster.local",
		"x-ai-route=llama-v2 -> outbound|8000|v2|llama.ai.svc.cluster.local",
		"x-ai-route=private -> outbound|8000|v1|llama.ai.svc.cluster.local",
		" -> outbound|8000||llama.ai.svc.cluster.local",
	})
	clusters := xdstest.ExtractClusters(s.Clusters(client))
	for _, c := range []string{"outbound|8000|v1|llama.ai.svc.cluster.local", "outbound|8000|v2|llama.ai.svc.cluster.local"} {
		if clusters[c] == nil {
			t.Errorf("no cluster %s (DestinationRule subsets)", c)
		}
	}

	// AuthorizationPolicy → RBAC on the model pods' inbound listener naming the principal.
	checkRBAC(t, s, model, "model-router-llama-callers", "spiffe://cluster.local/ns/ai/sa/client", true)
	checkRBAC(t, s, client, "model-router-llama-callers", "spiffe://cluster.local/ns/ai/sa/client", false)
}

func stringValue(t *testing.T, w *wasm.Wasm) string {
	t.Helper()
	sv := xdstest.UnmarshalAny[wrapperspb.StringValue](t, w.GetConfig().GetConfiguration())
	return sv.GetValue()
}

func checkWasm(t *testing.T, w *wasm.Wasm, holdsHeaders bool) {
	t.Helper()
	c := w.GetConfig()
	if c.GetAllowOnHeadersStopIteration().GetValue() != holdsHeaders {
		t.Errorf("allow_on_headers_stop_iteration = %v, want %v", c.GetAllowOnHeadersStopIteration().GetValue(), holdsHeaders)
	}
	if c.GetFailOpen() {
		t.Errorf("fail_open: the render asks FAIL_CLOSE")
	}
	remote := c.GetVmConfig().GetCode().GetRemote()
	if remote.GetHttpUri().GetUri() != "oci://"+image {
		t.Errorf("module URL %q, want oci://%s", remote.GetHttpUri().GetUri(), image)
	}
	if remote.GetSha256() != digest {
		t.Errorf("sha256 %q, want %s", remote.GetSha256(), digest)
	}
	if c.GetVmConfig().GetRuntime() != "envoy.wasm.runtime.v8" {
		t.Errorf("runtime %q", c.GetVmConfig().GetRuntime())
	}
}

// describeRoute: "HEADER=VALUE -> CLUSTER" (header part empty for a route without header match).
func describeRoute(r *route.Route) string {
	var h []string
	for _, m := range r.GetMatch().GetHeaders() {
		h = append(h, m.GetName()+"="+m.GetStringMatch().GetExact())
	}
	c := r.GetRoute().GetCluster()
	if wc := r.GetRoute().GetWeightedClusters(); wc != nil {
		for _, x := range wc.GetClusters() {
			c += x.GetName() + ","
		}
	}
	return strings.Join(h, "&") + " -> " + c
}

func checkRoutes(t *testing.T, rcs []*route.RouteConfiguration, rcName, vhName string, want []string) {
	t.Helper()
	rc := xdstest.ExtractRouteConfigurations(rcs)[rcName]
	if rc == nil {
		t.Fatalf("no route configuration %s", rcName)
	}
	for _, vh := range rc.GetVirtualHosts() {
		if vh.GetName() != vhName {
			continue
		}
		var got []string
		for _, r := range vh.GetRoutes() {
			got = append(got, describeRoute(r))
		}
		if !slices.Equal(got, want) {
			t.Errorf("routes of %s:\n got %q\nwant %q", vhName, got, want)
		}
		return
	}
	var names []string
	for _, vh := range rc.GetVirtualHosts() {
		names = append(names, vh.GetName())
	}
	t.Fatalf("no virtual host %s in %s: %v", vhName, rcName, names)
}

// checkRBAC: does an inbound RBAC filter of the proxy's listeners name the principal?
func checkRBAC(t *testing.T, s *xds.FakeDiscoveryServer, proxy *model.Proxy, policy, principal string, want bool) {
	t.Helper()
	found := false
	for _, l := range s.Listeners(proxy) {
		for _, fc := range l.GetFilterChains() {
			hcm := xdstest.ExtractHTTPConnectionManager(t, fc)
			if hcm == nil {
				continue
			}
			for _, f := range hcm.GetHttpFilters() {
				if f.GetName() != "envoy.filters.http.rbac" {
					continue
				}
				r := xdstest.UnmarshalAny[rbac.RBAC](t, f.GetTypedConfig())
				js, _ := protojson.Marshal(r)
				if strings.Contains(string(js), "policy["+policy+"]") && strings.Contains(string(js), principalMatch(principal)) {
					found = true
				}
			}
		}
	}
	if found != want {
		t.Errorf("RBAC of %s naming %s in %s's listeners: %v, want %v", policy, principal, proxy.ID, found, want)
	}
}

func principalMatch(p string) string { return strings.TrimPrefix(p, "spiffe://") }

func checkBufferLimit(t *testing.T, ls []*listener.Listener, name string, want uint32) {
	t.Helper()
	for _, l := range ls {
		got := l.GetPerConnectionBufferLimitBytes().GetValue()
		if l.Name == name && got != want {
			t.Errorf("listener %s buffer limit %d, want %d", l.Name, got, want)
		}
		if l.Name != name && got == 8388608 {
			t.Errorf("listener %s got the buffer limit too", l.Name)
		}
	}
}
