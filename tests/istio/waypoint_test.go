package istio

import (
	"slices"
	"strings"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xdstest"
	"istio.io/istio/pkg/test"
)

// The filter in an ambient waypoint (`--waypoint waypoint --extension-api traffic-extension`):
// a TrafficExtension attached by targetRefs to the waypoint Gateway, a mesh HTTPRoute on the
// Service clients call.
const waypointConfig = `bodyRouting: false
onUnknownModel: reject
models:
  - name: resnet-50
    allow: ["spiffe://cluster.local/ns/vision/*"]
    destinations:
      - {name: resnet-v1, weight: 90, host: resnet-v1.ai.svc.cluster.local, port: 8000}
      - {name: resnet-v2, weight: 10, host: resnet-v2.ai.svc.cluster.local, port: 8000}
`

func waypointFixtures(name string) string {
	return strings.Join([]string{
		`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: ` + name + `
  namespace: ai
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
status:
  addresses:
  - type: Hostname
    value: ` + name + `.ai.svc.cluster.local
`,
		`apiVersion: v1
kind: Service
metadata:
  labels:
    gateway.istio.io/managed: istio.io-mesh-controller
    gateway.networking.k8s.io/gateway-name: ` + name + `
    istio.io/gateway-name: ` + name + `
  name: ` + name + `
  namespace: ai
spec:
  clusterIP: 10.96.1.` + map[string]string{"waypoint": "1", "other-waypoint": "2"}[name] + `
  ports:
  - appProtocol: hbone
    name: mesh
    port: 15008
  selector:
    gateway.networking.k8s.io/gateway-name: ` + name + `
`,
	}, "\n---\n")
}

func TestWaypointRenderThroughIstiod(t *testing.T) {
	docs := splitDocs(t, wasmpack(t, waypointConfig, "--namespace", "ai", "--waypoint", "waypoint",
		"--service", "llm.ai.svc.cluster.local:8000", "--extension-api", "traffic-extension"))
	for _, w := range []string{"TrafficExtension/model-router", "HTTPRoute/model-router-llm-routes"} {
		if !slices.Contains(kinds(docs), w) {
			t.Fatalf("the render has no %s: %v", w, kinds(docs))
		}
	}
	validate(t, docs)
	llm := strings.Replace(service("llm", "ai", "10.96.0.40", 8000, "app: llm", map[string]string{"llm": "10.0.0.40"}),
		"metadata:\n  name: llm\n  namespace: ai\n", "metadata:\n  name: llm\n  namespace: ai\n  labels: {istio.io/use-waypoint: waypoint}\n", 1)
	fixtures := strings.Join([]string{
		waypointFixtures("waypoint"), waypointFixtures("other-waypoint"), llm,
		pod("waypoint-abc", "ai", "waypoint", "10.0.1.1", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}),
		pod("other-waypoint-abc", "ai", "other-waypoint", "10.0.1.2", map[string]string{"gateway.networking.k8s.io/gateway-name": "other-waypoint"}),
		pod("llm", "ai", "llm", "10.0.0.40", map[string]string{"app": "llm"}),
		pod("resnet-v1", "ai", "resnet", "10.0.0.41", map[string]string{"app": "resnet-v1"}),
		pod("resnet-v2", "ai", "resnet", "10.0.0.42", map[string]string{"app": "resnet-v2"}),
		service("resnet-v1", "ai", "10.96.0.41", 8000, "app: resnet-v1", map[string]string{"resnet-v1": "10.0.0.41"}),
		service("resnet-v2", "ai", "10.96.0.42", 8000, "app: resnet-v2", map[string]string{"resnet-v2": "10.0.0.42"}),
	}, "\n---\n")
	test.SetForTest(t, &features.EnableAmbient, true) // PILOT_ENABLE_AMBIENT, as an ambient istiod runs
	s := istiod(t, docs, fixtures)
	wp := func(name, ip string) *model.Proxy {
		labels := map[string]string{
			"gateway.networking.k8s.io/gateway-name": name,
			"gateway.istio.io/managed":               "istio.io-mesh-controller",
		}
		return s.SetupProxy(&model.Proxy{
			Type: model.Waypoint, ID: name + "-abc.ai", ConfigNamespace: "ai", IPAddresses: []string{ip}, Labels: labels,
			Metadata: &model.NodeMetadata{Namespace: "ai", ServiceAccount: name, Labels: labels, ClusterID: "Kubernetes", IstioVersion: "1.30.0"},
		})
	}
	waypoint, other := wp("waypoint", "10.0.1.1"), wp("other-waypoint", "10.0.1.2")

	var name string
	for _, l := range s.Listeners(waypoint) {
		for _, hf := range httpFilters(t, l) {
			if mr := modelRouterFilters(t, hf); len(mr) > 0 {
				name = mr[0]
				t.Logf("%s: %v", l.Name, hf)
			}
		}
	}
	if name == "" {
		t.Fatalf("istiod put the TrafficExtension in no listener of the targeted waypoint: %v", xdstest.ExtractListenerNames(s.Listeners(waypoint)))
	}
	for _, l := range s.Listeners(other) {
		for _, hf := range httpFilters(t, l) {
			if len(modelRouterFilters(t, hf)) != 0 {
				t.Errorf("the TrafficExtension is in %s of a waypoint it does not target", l.Name)
			}
		}
	}
	w := ecdsFor(t, s, waypoint, name)
	checkWasm(t, w, false)
	if !strings.Contains(stringValue(t, w), `"identitySource":"peerPrincipal"`) {
		t.Errorf("plugin configuration: %s", stringValue(t, w))
	}

	// The mesh HTTPRoute on llm → header routes to each destination Service in the waypoint.
	var got []string
	var rcs []*route.RouteConfiguration
	rcs = append(rcs, s.Routes(waypoint)...)
	for _, l := range s.Listeners(waypoint) {
		for _, fc := range l.GetFilterChains() {
			if h := xdstest.ExtractHTTPConnectionManager(t, fc); h != nil && h.GetRouteConfig() != nil {
				rcs = append(rcs, h.GetRouteConfig())
			}
		}
	}
	for _, rc := range rcs {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if hasHeader(r, "x-ai-route") {
					got = append(got, rc.GetName()+": "+describeRoute(r))
				}
			}
		}
	}
	want := []string{
		"inbound-vip|8000|http|llm.ai.svc.cluster.local: x-ai-route=resnet-v1 -> outbound|8000||resnet-v1.ai.svc.cluster.local",
		"inbound-vip|8000|http|llm.ai.svc.cluster.local: x-ai-route=resnet-v2 -> outbound|8000||resnet-v2.ai.svc.cluster.local",
	}
	if !slices.Equal(got, want) {
		t.Errorf("waypoint header routes:\n got %q\nwant %q", got, want)
	}
}

func hasHeader(r *route.Route, name string) bool {
	for _, h := range r.GetMatch().GetHeaders() {
		if h.GetName() == name {
			return true
		}
	}
	return false
}
