package plane_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/testauth"
)

// agent joins cluster (of organization acme) as an agent does, opens its
// stream and reports services; the stream stays open for the test.
func agent(t *testing.T, r *running, cluster string, services ...*agentv1.ServiceState) {
	t.Helper()
	agentIn(t, r, cluster, nil, services...)
}

// agentIn is agent whose cluster has these namespaces.
func agentIn(t *testing.T, r *running, cluster string, namespaces []string, services ...*agentv1.ServiceState) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	tok, err := r.admin.fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: md(cluster, "acme")}))
	if err != nil {
		t.Fatal(err)
	}
	key, err := agentcred.Generate()
	if err != nil {
		t.Fatal(err)
	}
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := agentv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{Protocols: protocols}}, r.url)
	joined, err := client.Join(ctx, connect.NewRequest(&agentv1.JoinRequest{Cluster: cluster, Token: tok.Msg.GetToken(), PublicKey: key.Public()}))
	if err != nil {
		t.Fatal(err)
	}
	assertion, err := key.Assert(cluster, joined.Msg.GetAudience(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	stream := client.Connect(ctx)
	stream.RequestHeader().Set("Authorization", "Bearer "+assertion)
	for _, m := range []*agentv1.ConnectRequest{
		{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: cluster, AgentVersion: "test"}}},
		{Msg: &agentv1.ConnectRequest_Inventory{Inventory: inventory(namespaces)}},
		{Msg: &agentv1.ConnectRequest_Runtime{Runtime: &agentv1.Runtime{Seq: 1, Full: true, Services: services}}},
	} {
		if err := stream.Send(m); err != nil {
			t.Fatalf("agent %s: %v", cluster, err)
		}
	}
	go func() { // read what the server sends until the test ends
		for {
			if _, err := stream.Receive(); err != nil {
				return
			}
		}
	}()
}

func inventory(namespaces []string) *agentv1.Inventory {
	inv := &agentv1.Inventory{Full: true}
	for _, ns := range namespaces {
		inv.Namespaces = append(inv.Namespaces, &agentv1.Namespace{Name: ns})
	}
	return inv
}

func service(ns, name string) *agentv1.ServiceState {
	return &agentv1.ServiceState{Namespace: ns, Name: name, Ports: []*agentv1.ServicePort{{Name: "http", Port: 80, Protocol: "HTTP"}},
		Endpoints: []*agentv1.LocalityEndpoints{{Region: "r", Zone: "z", Ready: 1}}}
}

// services is what ListServices shows c: "<cluster>/<namespace>/<name>".
func services(t *testing.T, c clients) []string {
	t.Helper()
	l, err := c.fleet.ListServices(context.Background(), connect.NewRequest(&pb.ListServicesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range l.Msg.GetServices() {
		for _, in := range s.GetInstances() {
			out = append(out, in.GetCluster()[strings.LastIndex(in.GetCluster(), "/")+1:]+"/"+s.GetNamespace()+"/"+s.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// Two tenants share two clusters. The fleet's views show each tenant what
// its workspaces own, a cluster's readers what no workspace owns there,
// and the organization's readers everything (REVIEW §3: views were scoped
// by cluster, so a tenant saw none of its services and a cluster's reader
// saw every tenant's).
func TestFleetViewsShowEachCallerWhatItsWorkspacesOwn(t *testing.T) {
	r := startPlane(t)
	ctx := context.Background()
	r.apply(t, res("Organization", md("acme"), nil), res("Tenant", md("one", "acme"), nil), res("Tenant", md("two", "acme"), nil),
		res("Workspace", md("shop", "acme", "one"), sel("shop")), res("Workspace", md("bank", "acme", "two"), sel("bank")),
		res("Cluster", md("c1", "acme"), nil), res("Cluster", md("c2", "acme"), nil))
	bind := func(name, target, role, who string) *pb.Resource {
		return res("AccessBinding", md(name, "acme"), map[string]any{"target": target, "allow": []any{map[string]any{"role": role, "subjects": []any{who}}}})
	}
	r.apply(t, bind("shop", org+"/tenants/one/workspaces/shop", "reader", "user:shop@example.com"),
		bind("bank", org+"/tenants/two/workspaces/bank", "reader", "user:bank@example.com"),
		bind("ops", org+"/clusters/c1", "reader", "user:ops@example.com"),
		bind("org", org, "reader", "user:cto@example.com"))
	agent(t, r, "c1", service("shop", "web"), service("bank", "ledger"), service("istio-system", "eastwest"))
	agent(t, r, "c2", service("shop", "web"), service("bank", "ledger"))
	all := []string{"c1/bank/ledger", "c1/istio-system/eastwest", "c1/shop/web", "c2/bank/ledger", "c2/shop/web"}
	deadline := time.Now().Add(20 * time.Second)
	for !slices.Equal(services(t, r.admin), all) {
		if time.Now().After(deadline) {
			t.Fatalf("the registry has %v, want %v", services(t, r.admin), all)
		}
		time.Sleep(20 * time.Millisecond)
	}
	as := func(who string) clients { return clientsFor(r.url, testauth.Token(t, r.auth, who, authn.MethodOIDC)) }
	for who, want := range map[string][]string{
		"user:shop@example.com":   {"c1/shop/web", "c2/shop/web"},
		"user:bank@example.com":   {"c1/bank/ledger", "c2/bank/ledger"},
		"user:ops@example.com":    {"c1/istio-system/eastwest"}, // no workspace owns it; c1's reader sees it, and no tenant's
		"user:cto@example.com":    all,
		"user:nobody@example.com": nil,
	} {
		if got := services(t, as(who)); !slices.Equal(got, want) {
			t.Errorf("services as %s: %v, want %v", who, got, want)
		}
	}

	// Effective settings: a namespace is its owner's to see.
	shop := as("user:shop@example.com")
	if _, err := shop.fleet.GetEffective(ctx, connect.NewRequest(&pb.GetEffectiveRequest{Cluster: "c1", Namespace: "shop"})); err != nil {
		t.Errorf("shop's reader reads its own namespace's settings: %v", err)
	}
	for _, ns := range []string{"bank", "istio-system"} {
		if _, err := shop.fleet.GetEffective(ctx, connect.NewRequest(&pb.GetEffectiveRequest{Cluster: "c1", Namespace: ns})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("shop's reader reads namespace %s's settings: %v", ns, err)
		}
	}
	if _, err := as("user:ops@example.com").fleet.GetEffective(ctx, connect.NewRequest(&pb.GetEffectiveRequest{Cluster: "c1", Namespace: "shop"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("c1's reader reads tenant one's namespace's settings: %v", err)
	}

	// A cluster another organization has under the same name is not even
	// named: same words as one that does not exist.
	r.apply(t, res("Organization", md("zzz"), nil), res("Cluster", md("c9", "zzz"), nil))
	_, hidden := shop.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c9"}))
	_, missing := shop.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c8"}))
	if connect.CodeOf(hidden) != connect.CodeNotFound || strings.Replace(hidden.Error(), "c9", "c8", 1) != missing.Error() {
		t.Errorf("another organization's cluster: %v; a missing one: %v", hidden, missing)
	}
	r.apply(t, res("Cluster", md("c1", "zzz"), nil))
	if _, err := shop.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c1"})); err != nil {
		t.Errorf("c1, which another organization also has, is ambiguous to a tenant who sees only acme's: %v", err)
	}
}

// Plan and compiled output show the caller's objects, not what another
// tenant has in the same cluster nor what is wrong with it.
func TestPlanAndCompiledOutputShowNoOtherTenantsObjects(t *testing.T) {
	r := startPlane(t)
	ctx := context.Background()
	r.apply(t, res("Organization", md("acme"), nil), res("Tenant", md("one", "acme"), nil), res("Tenant", md("two", "acme"), nil),
		res("Workspace", md("shop", "acme", "one"), sel("shop")), res("Workspace", md("bank", "acme", "two"), sel("bank")),
		res("Cluster", md("c1", "acme"), nil))
	r.apply(t, res("AccessBinding", md("shop", "acme"), map[string]any{"target": org + "/tenants/one/workspaces/shop",
		"allow": []any{map[string]any{"role": "editor", "subjects": []any{"user:shop@example.com"}}}}))
	gw := func(ws, tenant, ns, name string) []*pb.Resource {
		g := sel(ns)
		g["type"] = "gateway"
		return []*pb.Resource{res("Group", md("gw", "acme", tenant, ws), g),
			res("IngressGateway", md(name, "acme", tenant, ws, "gw"), map[string]any{
				"workloadSelector": map[string]any{"namespace": ns, "labels": map[string]any{"istio": "ingressgateway"}},
				"http": []any{map[string]any{"name": "web", "hostname": name + ".example.com", "port": 80, "routing": map[string]any{"rules": []any{
					map[string]any{"route": map[string]any{"host": ns + "/web." + ns + ".svc.cluster.local", "port": 8080}}}}}}})}
	}
	r.apply(t, gw("bank", "two", "bank", "secret-bank")...)
	// The two gateways' servers collide on a name in the cluster only if
	// both are compiled together; tenant two's object is what is there.
	agentIn(t, r, "c1", []string{"shop", "bank"})
	// Once the agent's namespaces are in, tenant two's gateway compiles.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		full, err := r.admin.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c1"}))
		if err == nil && strings.Contains(full.Msg.GetObjects(), "secret-bank") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenant two's gateway is not in c1's compiled output: %v", err)
		}
	}
	shop := clientsFor(r.url, testauth.Token(t, r.auth, "user:shop@example.com", authn.MethodOIDC))
	plan, err := shop.fleet.Plan(ctx, connect.NewRequest(&pb.PlanRequest{Resources: gw("shop", "one", "shop", "shop")}))
	if err != nil {
		t.Fatal(err)
	}
	text := plan.Msg.String()
	if len(plan.Msg.GetClusters()) != 1 || len(plan.Msg.GetClusters()[0].GetChanges()) == 0 {
		t.Fatalf("the plan shows no change in c1 for the caller's own gateway: %s", text)
	}
	if strings.Contains(text, "secret-bank") || strings.Contains(text, "tenants/two") {
		t.Fatalf("the plan shows tenant two's objects: %s", text)
	}
	r.apply(t, gw("shop", "one", "shop", "shop")...)
	// Once its own gateway is compiled (the bundle follows the store), the
	// output is checked for the other tenant's.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		compiled, err := shop.fleet.GetCompiled(ctx, connect.NewRequest(&pb.GetCompiledRequest{Cluster: "c1"}))
		if err != nil {
			t.Fatal(err)
		}
		out := compiled.Msg.GetObjects() + strings.Join(compiled.Msg.GetDiagnostics(), "\n")
		if strings.Contains(out, "secret-bank") || strings.Contains(out, "tenants/two") {
			t.Fatalf("the compiled output shows tenant two's objects: %s", out)
		}
		if strings.Contains(out, "shop.example.com") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the compiled output lacks the caller's own gateway: %s", out)
		}
	}
}
