package istio

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// Path routing only (bodyRouting: false): a plain WasmPlugin, or a TrafficExtension
// (`--extension-api traffic-extension`), in the callers' sidecars.
const pluginConfig = `bodyRouting: false
onUnknownModel: reject
models:
  - name: llama
    destinations:
      - {name: llama-v1, weight: 90, host: llama.ai.svc.cluster.local, subset: v1, port: 8000}
      - {name: llama-v2, weight: 10, host: llama.ai.svc.cluster.local, subset: v2, port: 8000}
`

// modelRouterFilter: the name of the HTTP filter istiod made of the plugin in a listener.
func modelRouterFilters(t *testing.T, hf []string) []string {
	var out []string
	for _, f := range hf {
		if strings.Contains(f, "model-router") {
			out = append(out, f)
		}
	}
	return out
}

func TestPluginAPIsThroughIstiod(t *testing.T) {
	for _, api := range []struct{ flag, kind string }{{"wasmplugin", "WasmPlugin"}, {"traffic-extension", "TrafficExtension"}} {
		t.Run(api.kind, func(t *testing.T) {
			docs := splitDocs(t, wasmpack(t, pluginConfig, "--namespace", "ai", "--selector", "app=client", "--extension-api", api.flag))
			if !slices.Contains(kinds(docs), api.kind+"/model-router") {
				t.Fatalf("the render has no %s: %v", api.kind, kinds(docs))
			}
			validate(t, docs)
			s := istiod(t, docs, sidecarFixtures())
			client := sidecar(s, "client", "ai", "client", "10.0.0.2", map[string]string{"app": "client"})
			other := sidecar(s, "other", "ai", "other", "10.0.0.3", map[string]string{"app": "other"})

			// match: CLIENT mode, port 8000 → the outbound listener of port 8000 only. The
			// UNSPECIFIED phase is not "just before the router" in istiod: it is after Istio's
			// authn/authz filters and before grpc_stats, fault, cors, telemetry and the router
			// (listener_builder.go), none of which routes, so the route header still decides.
			var name string
			for _, l := range s.Listeners(client) {
				for _, hf := range httpFilters(t, l) {
					mr := modelRouterFilters(t, hf)
					if len(mr) == 0 {
						continue
					}
					if l.Name != "0.0.0.0_8000" {
						t.Errorf("the plugin is in listener %s: %v", l.Name, hf)
					}
					i, r := slices.Index(hf, mr[0]), slices.Index(hf, "envoy.filters.http.router")
					if r < i {
						t.Errorf("the plugin is not before the router: %v", hf)
					}
					for _, between := range hf[i+1 : max(r, i+1)] {
						if !slices.Contains([]string{"envoy.filters.http.grpc_stats", "envoy.filters.http.fault", "envoy.filters.http.cors", "istio.stats"}, between) {
							t.Errorf("%s between the plugin and the router: %v", between, hf)
						}
					}
					name = mr[0]
					t.Logf("%s: %v", l.Name, hf)
				}
			}
			if name == "" {
				t.Fatalf("istiod put the %s in no listener of the selected sidecar", api.kind)
			}
			for _, l := range s.Listeners(other) {
				for _, hf := range httpFilters(t, l) {
					if len(modelRouterFilters(t, hf)) != 0 {
						t.Errorf("the plugin is in %s of a workload outside the selector", l.Name)
					}
				}
			}
			w := ecdsFor(t, s, client, name)
			checkWasm(t, w, false)
			var cfg map[string]any
			if err := json.Unmarshal([]byte(stringValue(t, w)), &cfg); err != nil {
				t.Fatalf("plugin configuration: %v", err)
			}
			if cfg["identitySource"] != "workload" || cfg["bodyRouting"] != false {
				t.Errorf("plugin configuration: %v", cfg)
			}
			checkRoutes(t, s.Routes(client), "8000", "llama.ai.svc.cluster.local:8000", []string{
				"x-ai-route=llama-v1 -> outbound|8000|v1|llama.ai.svc.cluster.local",
				"x-ai-route=llama-v2 -> outbound|8000|v2|llama.ai.svc.cluster.local",
				" -> outbound|8000||llama.ai.svc.cluster.local",
			})
		})
	}
}

// A second VirtualService for the model host: sidecars do not merge VirtualServices of one host
// (gateways do); istiod keeps the oldest (creationTimestamp) and drops the other. So a
// VirtualService the user had for the host before the install silently shadows the render's
// header routes; one created after it is shadowed instead. Recorded here so that a change in
// Istio's behaviour shows, and documented in docs/reach.md.
func TestAnotherVirtualServiceOfTheHost(t *testing.T) {
	docs := renderSidecar(t)
	user := func(age time.Duration) doc {
		return doc{Kind: "VirtualService", Name: "users-llama", Text: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: users-llama
  namespace: ai
  creationTimestamp: "` + time.Now().Add(age).UTC().Format(time.RFC3339) + `"
spec:
  hosts: [llama.ai.svc.cluster.local]
  http:
  - route:
    - destination: {host: llama.ai.svc.cluster.local, subset: v2, port: {number: 8000}}
`}
	}
	stamp := func(docs []doc, at time.Time) []doc {
		out := slices.Clone(docs)
		for i, d := range out {
			if d.Kind == "VirtualService" {
				out[i].Text = strings.Replace(d.Text, "metadata:\n", "metadata:\n  creationTimestamp: \""+at.UTC().Format(time.RFC3339)+"\"\n", 1)
			}
		}
		return out
	}
	now := time.Now()
	ours := []string{
		"x-ai-route=llama-v1 -> outbound|8000|v1|llama.ai.svc.cluster.local",
		"x-ai-route=llama-v2 -> outbound|8000|v2|llama.ai.svc.cluster.local",
		"x-ai-route=private -> outbound|8000|v1|llama.ai.svc.cluster.local",
		" -> outbound|8000||llama.ai.svc.cluster.local",
	}
	t.Run("older user VirtualService shadows the render", func(t *testing.T) {
		s := istiod(t, append(stamp(docs, now), user(-time.Hour)), sidecarFixtures())
		client := sidecar(s, "client", "ai", "client", "10.0.0.2", map[string]string{"app": "client"})
		checkRoutes(t, s.Routes(client), "8000", "llama.ai.svc.cluster.local:8000", []string{" -> outbound|8000|v2|llama.ai.svc.cluster.local"})
	})
	t.Run("newer user VirtualService is shadowed", func(t *testing.T) {
		s := istiod(t, append(stamp(docs, now), user(time.Hour)), sidecarFixtures())
		client := sidecar(s, "client", "ai", "client", "10.0.0.2", map[string]string{"app": "client"})
		checkRoutes(t, s.Routes(client), "8000", "llama.ai.svc.cluster.local:8000", ours)
	})
}
