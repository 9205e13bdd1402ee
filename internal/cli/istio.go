package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/central/clusterstatus"
	"flotilla.io/flotilla/internal/compile"
	"flotilla.io/flotilla/internal/istioinstall"
	"flotilla.io/flotilla/internal/resource"
)

// istioRow is one revision in one cluster: what intent wants there (the
// IstioInstallation and its state in that cluster) beside what the cluster
// runs (the agent's report).
type istioRow struct {
	Cluster      string `json:"cluster"`
	Revision     string `json:"revision"`
	Installation string `json:"installation,omitempty"`
	// State is the installation's in the cluster: Applied, Failed,
	// Pending; empty for a revision no installation wants there.
	State   string `json:"state,omitempty"`
	Message string `json:"message,omitempty"`
	// What the cluster runs; Running is false when the agent reports no
	// istiod of the revision.
	Running bool `json:"running"`
	clusterstatus.IstioRevision
}

// getIstio prints, per cluster and revision, the installations that want
// it and what the cluster runs: versions, tags, istiod's ready replicas,
// the proxies each revision injected, its webhooks, and the last error.
func (e *env) getIstio(cmd *cobra.Command, output string, only []string) error {
	ctx := cmd.Context()
	rows, err := e.istioRows(ctx, only)
	if err != nil {
		return err
	}
	switch output {
	case "json", "yaml":
		data, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		if output == "yaml" {
			if data, err = yaml.JSONToYAML(data); err != nil {
				return err
			}
			_, err = e.out.Write(data)
			return err
		}
		_, err = fmt.Fprintln(e.out, string(data))
		return err
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tREVISION\tINSTALLATION\tSTATE\tVERSION\tTAGS\tISTIOD\tPROXIES\tWEBHOOKS\tMESSAGE")
	for _, r := range rows {
		istiod, version := "-", cmp.Or(r.Version, "-")
		if r.Running {
			istiod = fmt.Sprintf("%d/%d", r.ReadyReplicas, r.Replicas)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Cluster, r.Revision, cmp.Or(r.Installation, "-"), cmp.Or(r.State, "-"),
			version, cmp.Or(strings.Join(r.Tags, ","), "-"), istiod, r.Proxies, cmp.Or(strings.Join(r.Webhooks, ","), "-"), r.Message)
	}
	return tw.Flush()
}

func (e *env) istioRows(ctx context.Context, only []string) ([]istioRow, error) {
	clusters, err := e.listAll(ctx, &pb.ListRequest{Kind: resource.KindCluster})
	if err != nil {
		return nil, err
	}
	installs, err := e.listAll(ctx, &pb.ListRequest{Kind: resource.KindIstioInstallation})
	if err != nil {
		return nil, err
	}
	type key struct{ cluster, revision string }
	byKey := map[key]*istioRow{}
	row := func(cluster, revision string) *istioRow {
		k := key{cluster, revision}
		if byKey[k] == nil {
			byKey[k] = &istioRow{Cluster: cluster, Revision: revision}
			byKey[k].Name = revision
		}
		return byKey[k]
	}
	wanted := func(cluster string) bool { return len(only) == 0 || slices.Contains(only, cluster) }
	facts := map[string]*bundle.ClusterFacts{}
	for _, c := range clusters {
		var spec bundle.ClusterFacts
		data, _ := json.Marshal(c.GetSpec().AsMap())
		_ = json.Unmarshal(data, &spec)
		facts[c.GetMetadata().GetName()] = &spec
	}
	for _, in := range installs {
		var spec pb.IstioInstallationSpec
		data, _ := json.Marshal(in.GetSpec().AsMap())
		if err := protojson.Unmarshal(data, &spec); err != nil {
			return nil, fmt.Errorf("IstioInstallation %s: %w", in.GetMetadata().GetFqn(), err)
		}
		st, err := e.fleet().GetStatus(ctx, connect.NewRequest(&pb.GetStatusRequest{Kind: resource.KindIstioInstallation, Fqn: in.GetMetadata().GetFqn()}))
		if err != nil {
			return nil, err
		}
		states := map[string]*pb.ClusterState{}
		for _, c := range st.Msg.GetClusters() {
			states[c.GetCluster()] = c
		}
		for name, f := range facts {
			if !wanted(name) || !compile.SelectsCluster(spec.GetClusters(), name, f) {
				continue
			}
			r := row(name, istioinstall.Revision(&spec))
			r.Installation, r.State = in.GetMetadata().GetName(), "Pending"
			if c := states[name]; c != nil {
				r.State, r.Message = c.GetState(), c.GetMessage()
			}
		}
	}
	for _, c := range clusters {
		name := c.GetMetadata().GetName()
		if !wanted(name) {
			continue
		}
		data, err := json.Marshal(c.GetStatus().AsMap()["istio"])
		if err != nil {
			return nil, err
		}
		var ist clusterstatus.Istio
		if string(data) != "null" {
			if err := json.Unmarshal(data, &ist); err != nil {
				return nil, fmt.Errorf("cluster %s: its Istio status: %w", name, err)
			}
		}
		for _, rev := range ist.Revisions {
			r := row(name, rev.Name)
			r.IstioRevision, r.Running = rev, true
		}
	}
	out := make([]istioRow, 0, len(byKey))
	for _, r := range byKey {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b istioRow) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Revision, b.Revision))
	})
	return out, nil
}

// describeIstio prints Istio's control plane in one cluster: per revision,
// the installation that wants it (version, profile, tags, gateways, its
// state there) and what runs (istiod's replicas, webhooks, proxies).
func (e *env) describeIstio(cmd *cobra.Command, cluster string) error {
	rows, err := e.istioRows(cmd.Context(), []string{cluster})
	if err != nil {
		return err
	}
	installs, err := e.listAll(cmd.Context(), &pb.ListRequest{Kind: resource.KindIstioInstallation})
	if err != nil {
		return err
	}
	byName := map[string]*pb.Resource{}
	for _, in := range installs {
		byName[in.GetMetadata().GetName()] = in
	}
	fmt.Fprintf(e.out, "Cluster:\t%s\n", cluster)
	if len(rows) == 0 {
		fmt.Fprintln(e.out, "Revisions:\t<none>: no IstioInstallation selects it, and its agent reports no istiod")
		return nil
	}
	for _, r := range rows {
		w := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "Revision %s:\n", r.Revision)
		if in := byName[r.Installation]; in != nil {
			fmt.Fprintf(w, "  Installation:\t%s (version %s, profile %s)\n", in.GetMetadata().GetFqn(), specString(in, "version"), cmp.Or(specString(in, "profile"), "default"))
			fmt.Fprintf(w, "  Wanted tags:\t%s\n", cmp.Or(specString(in, "tags"), "<none>"))
			var gws []string
			if list, ok := in.GetSpec().AsMap()["gateways"].([]any); ok {
				for _, g := range list {
					if m, ok := g.(map[string]any); ok {
						gws = append(gws, fmt.Sprintf("%v (%v)", m["name"], m["type"]))
					}
				}
			}
			fmt.Fprintf(w, "  Gateways:\t%s\n", cmp.Or(strings.Join(gws, ", "), "<none>"))
			fmt.Fprintf(w, "  State:\t%s %s\n", r.State, r.Message)
		} else {
			fmt.Fprintf(w, "  Installation:\t<none>: no IstioInstallation wants this revision here\n")
		}
		if r.Running {
			fmt.Fprintf(w, "  istiod:\t%d/%d ready, version %s\n", r.ReadyReplicas, r.Replicas, cmp.Or(r.Version, "?"))
			fmt.Fprintf(w, "  Tags:\t%s\n", cmp.Or(strings.Join(r.Tags, ", "), "<none>"))
			fmt.Fprintf(w, "  Webhooks:\t%s\n", cmp.Or(strings.Join(r.Webhooks, ", "), "<none reported>"))
			fmt.Fprintf(w, "  Proxies:\t%d (pods a restart would move off this revision)\n", r.Proxies)
		} else {
			fmt.Fprintf(w, "  istiod:\tnot running (not installed yet, or the agent has not reported it)\n")
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}
