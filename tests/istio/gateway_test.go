package istio

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pilot/test/xdstest"
)

// The filter in a Gateway API gateway (`--gateway ai-gateway`): the EnvoyFilter pair by
// targetRefs, an HTTPRoute with a header route per destination Service.
const gatewayConfig = `bodyRouting: true
onUnknownModel: reject
models:
  - name: llama
    destinations:
      - {name: llama-v1, weight: 50, host: llama-v1.ai.svc.cluster.local, port: 8000}
      - {name: llama-v2, weight: 50, host: llama-v2.ai.svc.cluster.local, port: 8000}
  - name: gpt-4o
    destinations:
      - {name: openai, host: api.openai.com, port: 443}
`

func gatewayFixtures() string {
	return strings.Join([]string{
		`apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: istio
spec:
  controllerName: istio.io/gateway-controller
`,
		`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: ai-gateway
  namespace: ai
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces: {from: Same}
`,
		`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: other-gateway
  namespace: ai
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
`,
		pod("ai-gateway-istio", "ai", "ai-gateway-istio", "10.0.0.30", map[string]string{"gateway.networking.k8s.io/gateway-name": "ai-gateway"}),
		pod("other-gateway-istio", "ai", "other-gateway-istio", "10.0.0.31", map[string]string{"gateway.networking.k8s.io/gateway-name": "other-gateway"}),
		service("ai-gateway-istio", "ai", "10.96.0.30", 80, "gateway.networking.k8s.io/gateway-name: ai-gateway", map[string]string{"ai-gateway-istio": "10.0.0.30"}),
		service("other-gateway-istio", "ai", "10.96.0.31", 80, "gateway.networking.k8s.io/gateway-name: other-gateway", map[string]string{"other-gateway-istio": "10.0.0.31"}),
		pod("llama-v1", "ai", "llama", "10.0.0.11", map[string]string{"app": "llama-v1"}),
		pod("llama-v2", "ai", "llama", "10.0.0.12", map[string]string{"app": "llama-v2"}),
		service("llama-v1", "ai", "10.96.0.11", 8000, "app: llama-v1", map[string]string{"llama-v1": "10.0.0.11"}),
		service("llama-v2", "ai", "10.96.0.12", 8000, "app: llama-v2", map[string]string{"llama-v2": "10.0.0.12"}),
	}, "\n---\n")
}

func renderGateway(t *testing.T) []doc {
	t.Helper()
	docs := splitDocs(t, wasmpack(t, gatewayConfig, "--namespace", "ai", "--gateway", "ai-gateway", "--hostname", "llm.example.com"))
	for _, w := range []string{"EnvoyFilter/model-router-extension", "EnvoyFilter/model-router", "HTTPRoute/model-router-routes",
		"ServiceEntry/model-router-api-openai-com", "DestinationRule/model-router-api-openai-com-tls",
		"AuthorizationPolicy/model-router-llama-v1-callers"} {
		if !slices.Contains(kinds(docs), w) {
			t.Fatalf("the render has no %s: %v", w, kinds(docs))
		}
	}
	return docs
}

func gatewayProxy(s *xds.FakeDiscoveryServer, name, ip string) *model.Proxy {
	labels := map[string]string{"gateway.networking.k8s.io/gateway-name": name}
	return s.SetupProxy(&model.Proxy{
		Type:            model.Router,
		ID:              name + "-istio.ai",
		ConfigNamespace: "ai",
		IPAddresses:     []string{ip},
		Labels:          labels,
		Metadata: &model.NodeMetadata{
			Namespace: "ai", ServiceAccount: name + "-istio", Labels: labels,
			ClusterID: "Kubernetes", IstioVersion: "1.30.0",
		},
	})
}

func TestGatewayRenderThroughIstiod(t *testing.T) {
	docs := renderGateway(t)
	validate(t, docs)
	s := istiod(t, docs, gatewayFixtures())
	gw := gatewayProxy(s, "ai-gateway", "10.0.0.30")
	other := gatewayProxy(s, "other-gateway", "10.0.0.31")

	ls := s.Listeners(gw)
	got := listenersWith(t, ls, ecdsName)
	if len(got) == 0 {
		t.Fatalf("the filter is in no listener of the gateway; listeners: %v", xdstest.ExtractListenerNames(ls))
	}
	for _, l := range ls {
		for _, hf := range httpFilters(t, l) {
			t.Logf("%s HTTP filters: %v", l.Name, hf)
			i := slices.Index(hf, ecdsName)
			if i < 0 || i+1 >= len(hf) || hf[i+1] != "envoy.filters.http.router" {
				t.Errorf("listener %s: the filter is not right before the router: %v", l.Name, hf)
			}
		}
	}
	if o := listenersWith(t, s.Listeners(other), ecdsName); len(o) != 0 {
		t.Errorf("the filter is in another gateway's listeners: %v", o)
	}
	w := ecdsFor(t, s, gw, ecdsName)
	checkWasm(t, w, true)
	// The ECDS entry is only the targeted gateway's: another gateway gets none.
	if ecs := s.ConfigGen.BuildExtensionConfiguration(other, s.PushContext(), []string{ecdsName}, nil); len(ecs) != 0 {
		t.Errorf("another gateway is served the ECDS entry")
	}

	checkRoutes(t, s.RoutesFromListeners(gw, ls), "http.80", "llm.example.com:80", []string{
		"x-ai-route=llama-v1 -> outbound|8000||llama-v1.ai.svc.cluster.local",
		"x-ai-route=llama-v2 -> outbound|8000||llama-v2.ai.svc.cluster.local",
		"x-ai-route=openai -> outbound|80||api.openai.com",
	})

	// ServiceEntry + DestinationRule → the external provider's cluster originates TLS with SNI.
	openai := xdstest.ExtractClusters(s.Clusters(gw))["outbound|80||api.openai.com"]
	if openai == nil {
		t.Fatalf("no cluster for api.openai.com")
	}
	js, _ := protojson.Marshal(openai)
	if !strings.Contains(string(js), `"sni":"api.openai.com"`) || !strings.Contains(string(js), "envoy.transport_sockets.tls") {
		t.Errorf("api.openai.com's cluster does not originate TLS with SNI: %s", js)
	}
	if !strings.Contains(string(js), `"portValue":443`) {
		t.Errorf("api.openai.com's cluster does not send to port 443: %s", js)
	}

	// AuthorizationPolicy → RBAC on each model pod's inbound listener naming the gateway's account.
	v1 := sidecar(s, "llama-v1", "ai", "llama", "10.0.0.11", map[string]string{"app": "llama-v1"})
	checkRBAC(t, s, v1, "model-router-llama-v1-callers", "spiffe://cluster.local/ns/ai/sa/ai-gateway-istio", true)
	checkRBAC(t, s, v1, "model-router-llama-v2-callers", "spiffe://cluster.local/ns/ai/sa/ai-gateway-istio", false)
}
