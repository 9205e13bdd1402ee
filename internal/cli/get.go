package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/resource"
)

func newGetCmd(e *env) *cobra.Command {
	var (
		parents     parentFlags
		output      string
		sel         string
		clusterName string
		namespace   string
	)
	cmd := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "List resources of a kind, or show one",
		Long: `List resources of a kind, or show one by name. Kinds may be given by name,
plural or short name (org, tenant, ws, grp, cl). Parent flags narrow the
search; a name that is unique in the fleet needs none.`,
		Example: "  flotilla get workspaces --org acme\n  flotilla get ws payments -o yaml\n  flotilla get services\n  flotilla get service shop/reviews -o yaml\n" +
			"  flotilla get compiled --cluster c1\n  flotilla get effective --cluster c1 --namespace shop\n  flotilla get istio [CLUSTER]",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "compiled" {
				return e.getCompiled(cmd, clusterName, args[1:])
			}
			if args[0] == "effective" {
				if err := checkOutput(output); err != nil {
					return err
				}
				return e.getEffective(cmd, clusterName, namespace, output)
			}
			if args[0] == "istio" {
				if err := checkOutput(output); err != nil {
					return err
				}
				return e.getIstio(cmd, output, args[1:])
			}
			if args[0] == "services" || args[0] == "service" || args[0] == "svc" {
				if err := checkOutput(output); err != nil {
					return err
				}
				return e.getServices(cmd, output, args[1:])
			}
			k, err := e.kindArg(args[0])
			if err != nil {
				return err
			}
			if err := checkOutput(output); err != nil {
				return err
			}
			var list []*pb.Resource
			if len(args) == 2 {
				r, err := e.find(cmd, k, args[1], &parents)
				if err != nil {
					return err
				}
				list = []*pb.Resource{r}
			} else {
				all, err := e.listAll(cmd.Context(), &pb.ListRequest{Kind: k.Name, Parent: parents.ancestor(e), LabelSelector: sel})
				if err != nil {
					return err
				}
				list = parents.filter(all)
			}
			return e.print(output, k, list, len(args) == 2)
		},
	}
	parents.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, yaml or json")
	cmd.Flags().StringVarP(&sel, "selector", "l", "", "label selector, e.g. env=prod,tier!=web")
	cmd.Flags().StringVar(&clusterName, "cluster", "", "with `get compiled` and `get effective`: the cluster")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "with `get effective`: the namespace whose settings to show")
	return cmd
}

// serviceName splits a NAMESPACE/NAME argument.
func serviceName(arg string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(arg, "/")
	if !ok || namespace == "" || name == "" {
		return "", "", fmt.Errorf("name a service as NAMESPACE/NAME, e.g. shop/reviews (got %q)", arg)
	}
	return namespace, name, nil
}

// getServices prints the fleet's services: each namespace/name with its
// clusters, ready endpoints per cluster and locality, ports and conflicts.
// It is runtime state, as the agents report it.
func (e *env) getServices(cmd *cobra.Command, output string, rest []string) error {
	req := &pb.ListServicesRequest{}
	if len(rest) == 1 {
		ns, name, err := serviceName(rest[0])
		if err != nil {
			return err
		}
		req.Namespace, req.Name = ns, name
	}
	res, err := e.fleet().ListServices(cmd.Context(), connect.NewRequest(req))
	if err != nil {
		return err
	}
	services := res.Msg.GetServices()
	if len(rest) == 1 && len(services) == 0 {
		return fmt.Errorf("no service %s in any cluster you may read", rest[0])
	}
	switch output {
	case "yaml", "json":
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(res.Msg)
		if err != nil {
			return err
		}
		if output == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return err
			}
		}
		_, err = e.out.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tCLUSTERS\tREADY\tPORTS\tEXPOSED\tCONFLICTS")
	for _, s := range services {
		var clusters, ready, ports []string
		for _, in := range s.GetInstances() {
			name := in.GetCluster()[strings.LastIndex(in.GetCluster(), "/")+1:]
			clusters = append(clusters, name)
			var locs []string
			for _, l := range in.GetEndpoints() {
				locs = append(locs, fmt.Sprintf("%s/%s:%d", l.GetRegion(), l.GetZone(), l.GetReady()))
			}
			r := fmt.Sprintf("%s=%d", name, in.GetReady())
			if len(locs) > 0 {
				r += "(" + strings.Join(locs, ",") + ")"
			}
			if in.GetStale() {
				r += fmt.Sprintf("[stale:%s]", time.Since(in.GetLastSeen().AsTime()).Round(time.Second))
			}
			ready = append(ready, r)
		}
		for _, p := range s.GetPorts() {
			ports = append(ports, fmt.Sprintf("%s:%d/%s", p.GetName(), p.GetNumber(), p.GetProtocol()))
		}
		conflicts := "-"
		if len(s.GetConflicts()) > 0 {
			conflicts = strings.Join(s.GetConflicts(), "; ")
		}
		exposed := "no"
		if len(s.GetExposedBy()) > 0 {
			exposed = "yes"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", s.GetNamespace(), s.GetName(), strings.Join(clusters, ","), strings.Join(ready, ","), strings.Join(ports, ","), exposed, conflicts)
	}
	return tw.Flush()
}

// getCompiled prints the native Istio objects a cluster should have now.
func (e *env) getCompiled(cmd *cobra.Command, cluster string, rest []string) error {
	if cluster == "" && len(rest) == 1 {
		cluster = rest[0]
	}
	if cluster == "" {
		return fmt.Errorf("name the cluster: flotilla get compiled --cluster c1")
	}
	res, err := e.fleet().GetCompiled(cmd.Context(), connect.NewRequest(&pb.GetCompiledRequest{Cluster: cluster}))
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "# cluster %s, bundle version %s\n", res.Msg.GetCluster(), res.Msg.GetBundleVersion())
	fmt.Fprint(e.out, res.Msg.GetObjects())
	for _, d := range res.Msg.GetDiagnostics() {
		fmt.Fprintf(e.errOut, "warning: %s\n", d)
	}
	return nil
}

// getEffective prints the traffic and security settings in effect in one
// namespace of one cluster, each with the setting and level it came from.
func (e *env) getEffective(cmd *cobra.Command, cluster, namespace, output string) error {
	if cluster == "" || namespace == "" {
		return fmt.Errorf("name the cluster and the namespace: flotilla get effective --cluster c1 --namespace shop")
	}
	res, err := e.fleet().GetEffective(cmd.Context(), connect.NewRequest(&pb.GetEffectiveRequest{Cluster: cluster, Namespace: namespace}))
	if err != nil {
		return err
	}
	m := res.Msg
	switch output {
	case "json", "yaml":
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
		if err != nil {
			return err
		}
		if output == "yaml" {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return err
			}
		}
		_, err = e.out.Write(append(b, '\n'))
		return err
	}
	if m.GetWorkspace() == "" {
		fmt.Fprintf(e.out, "namespace %s of cluster %s is in no workspace: no settings apply\n", namespace, m.GetCluster())
		return nil
	}
	fmt.Fprintf(e.out, "# cluster %s, namespace %s, workspace %s\n", m.GetCluster(), namespace, m.GetWorkspace())
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIELD\tVALUE\tLEVEL\tSOURCE\tLIMIT")
	for _, s := range m.GetSettings() {
		limit := "-"
		if s.GetLimitSource() != "" {
			limit = "STRICTER at " + s.GetLimitLevel() + " (" + s.GetLimitSource() + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.GetField(), s.GetValue(), s.GetLevel(), s.GetSource(), limit)
	}
	if len(m.GetSettings()) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range m.GetProblems() {
		fmt.Fprintf(e.errOut, "not in effect: %s\n", p)
	}
	return nil
}

func checkOutput(o string) error {
	switch o {
	case "table", "yaml", "json":
		return nil
	}
	return fmt.Errorf("-o %q: use table, yaml or json", o)
}

// findArg resolves a KIND NAME pair given on the command line.
func (e *env) findArg(cmd *cobra.Command, kindName, name string, parents *parentFlags) (*resource.Kind, *pb.Resource, error) {
	k, err := e.kindArg(kindName)
	if err != nil {
		return nil, nil, err
	}
	r, err := e.find(cmd, k, name, parents)
	return k, r, err
}

// find returns one resource by name: directly when the parent flags name its
// every ancestor, otherwise by searching, refusing an ambiguous name.
func (e *env) find(cmd *cobra.Command, k *resource.Kind, name string, parents *parentFlags) (*pb.Resource, error) {
	md := parents.metadata(name)
	if _, err := e.reg.FQNOf(k, md); err == nil {
		res, err := e.resources().Get(cmd.Context(), connect.NewRequest(&pb.GetRequest{Kind: k.Name, Metadata: md}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetResource(), nil
	}
	all, err := e.listAll(cmd.Context(), &pb.ListRequest{Kind: k.Name, Name: name, Parent: parents.ancestor(e)})
	if err != nil {
		return nil, err
	}
	found := parents.filter(all)
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%s %q not found", k.Name, name)
	case 1:
		return found[0], nil
	}
	var fqns []string
	for _, r := range found {
		fqns = append(fqns, r.GetMetadata().GetFqn())
	}
	return nil, fmt.Errorf("%s %q is ambiguous: %s; narrow it with --org, --tenant, --workspace or --group", k.Name, name, strings.Join(fqns, ", "))
}

// print writes resources as a table, or as YAML/JSON that applies back unchanged.
func (e *env) print(output string, k *resource.Kind, list []*pb.Resource, single bool) error {
	switch output {
	case "json":
		if single && len(list) == 1 {
			return writeJSON(e.out, list[0])
		}
		items := make([]json.RawMessage, 0, len(list))
		for _, r := range list {
			b, err := protojson.Marshal(r)
			if err != nil {
				return err
			}
			items = append(items, b)
		}
		b, err := json.MarshalIndent(map[string]any{"items": items}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(e.out, string(b))
		return err
	case "yaml":
		for i, r := range list {
			if i > 0 {
				fmt.Fprintln(e.out, "---")
			}
			b, err := toYAML(r)
			if err != nil {
				return err
			}
			e.out.Write(b)
		}
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintf(e.errOut, "no %s found\n", k.Plural)
		return nil
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 3, ' ', 0)
	cols := columnsFor(e.reg, k)
	heads := make([]string, len(cols))
	for i, c := range cols {
		heads[i] = c.head
	}
	fmt.Fprintln(tw, strings.Join(heads, "\t"))
	for _, r := range list {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = c.value(r)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// toYAML renders a message as YAML with protojson's field names.
func toYAML(m proto.Message) ([]byte, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(b)
}

type column struct {
	head  string
	value func(*pb.Resource) string
}

func specString(r *pb.Resource, path ...string) string {
	var v any = r.GetSpec().AsMap()
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[p]
	}
	switch x := v.(type) {
	case nil:
		return ""
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, ",")
	default:
		return fmt.Sprint(x)
	}
}

func age(r *pb.Resource) string {
	t := r.GetMetadata().GetCreateTime()
	if t == nil {
		return ""
	}
	d := time.Since(t.AsTime())
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// columnsFor is the table layout of a kind: its name, its parents, what
// matters about it, and its age.
func columnsFor(reg *resource.Registry, k *resource.Kind) []column {
	cols := []column{{"NAME", func(r *pb.Resource) string { return r.GetMetadata().GetName() }}}
	for _, a := range reg.Ancestors(k) {
		field := strings.ToLower(a.Name)
		cols = append(cols, column{strings.ToUpper(a.Name), func(r *pb.Resource) string {
			md := r.GetMetadata().ProtoReflect()
			return md.Get(md.Descriptor().Fields().ByName(protoreflect.Name(field))).String()
		}})
	}
	switch k.Name {
	case resource.KindWorkspace:
		cols = append(cols, column{"NAMESPACES", func(r *pb.Resource) string { return specString(r, "namespaceSelector", "names") }})
	case resource.KindGroup:
		cols = append(cols,
			column{"TYPE", func(r *pb.Resource) string { return specString(r, "type") }},
			column{"MODE", func(r *pb.Resource) string { return specString(r, "configMode") }},
			column{"NAMESPACES", func(r *pb.Resource) string { return specString(r, "namespaceSelector", "names") }})
	case resource.KindIstioInstallation:
		cols = append(cols,
			column{"VERSION", func(r *pb.Resource) string { return specString(r, "version") }},
			column{"REVISION", func(r *pb.Resource) string { return cmp.Or(specString(r, "revision"), "default") }},
			column{"PROFILE", func(r *pb.Resource) string { return cmp.Or(specString(r, "profile"), "default") }},
			column{"TAGS", func(r *pb.Resource) string { return specString(r, "tags") }})
	case resource.KindCluster:
		cols = append(cols,
			column{"NETWORK", func(r *pb.Resource) string { return specString(r, "network") }},
			column{"REGION", func(r *pb.Resource) string { return specString(r, "region") }},
			column{"ZONE", func(r *pb.Resource) string { return specString(r, "zone") }})
	default:
		cols = append(cols, column{"DISPLAY NAME", func(r *pb.Resource) string { return specString(r, "displayName") }})
	}
	return append(cols, column{"AGE", age})
}

// describeService prints a fleet service: where it runs, with its ready
// endpoints, and the Istio objects generated for it in each cluster (as the
// cluster's current bundle compiles).
func (e *env) describeService(cmd *cobra.Command, arg string) error {
	ns, name, err := serviceName(arg)
	if err != nil {
		return err
	}
	res, err := e.fleet().ListServices(cmd.Context(), connect.NewRequest(&pb.ListServicesRequest{Namespace: ns, Name: name}))
	if err != nil {
		return err
	}
	if len(res.Msg.GetServices()) == 0 {
		return fmt.Errorf("no service %s in any cluster you may read", arg)
	}
	s := res.Msg.GetServices()[0]
	fmt.Fprintf(e.out, "Service:\t%s/%s\n", s.GetNamespace(), s.GetName())
	var ports []string
	for _, p := range s.GetPorts() {
		ports = append(ports, fmt.Sprintf("%s:%d/%s", p.GetName(), p.GetNumber(), p.GetProtocol()))
	}
	fmt.Fprintf(e.out, "Ports:\t%s\n", strings.Join(ports, ", "))
	for _, c := range s.GetConflicts() {
		fmt.Fprintf(e.out, "Conflict:\t%s\n", c)
	}
	exposed := "no (no workspace setting exposes it)"
	if len(s.GetExposedBy()) > 0 {
		exposed = "by " + strings.Join(s.GetExposedBy(), ", ")
	}
	fmt.Fprintf(e.out, "Exposed:\t%s\n", exposed)
	fmt.Fprintln(e.out, "Instances:")
	for _, in := range s.GetInstances() {
		var locs []string
		for _, l := range in.GetEndpoints() {
			locs = append(locs, fmt.Sprintf("%s/%s: %d", l.GetRegion(), l.GetZone(), l.GetReady()))
		}
		stale := ""
		if in.GetStale() {
			stale = fmt.Sprintf(" (stale: agent disconnected, last report %s ago)", time.Since(in.GetLastSeen().AsTime()).Round(time.Second))
		}
		fmt.Fprintf(e.out, "  %s: %d ready [%s]%s\n", in.GetCluster(), in.GetReady(), strings.Join(locs, ", "), stale)
	}
	clusters, err := e.listAll(cmd.Context(), &pb.ListRequest{Kind: resource.KindCluster})
	if err != nil {
		return err
	}
	fmt.Fprintln(e.out, "Generated (compiled from each cluster's current bundle):")
	host := name + "." + ns + ".svc.cluster.local"
	for _, c := range clusters {
		comp, err := e.fleet().GetCompiled(cmd.Context(), connect.NewRequest(&pb.GetCompiledRequest{Cluster: c.GetMetadata().GetFqn()}))
		if err != nil {
			return err
		}
		var lines []string
		for _, doc := range strings.Split(comp.Msg.GetObjects(), "---\n") {
			var o struct {
				Kind     string
				Metadata struct{ Name, Namespace string }
				Spec     map[string]any
			}
			if yaml.Unmarshal([]byte(doc), &o) != nil || o.Kind == "" {
				continue
			}
			about := false
			switch o.Kind {
			case "WorkloadEntry":
				about = o.Metadata.Namespace == ns && strings.HasPrefix(o.Metadata.Name, name+"-")
			case "ServiceEntry":
				hosts, _ := o.Spec["hosts"].([]any)
				about = len(hosts) == 1 && hosts[0] == host
			case "DestinationRule":
				about = o.Spec["host"] == host
			}
			if !about {
				continue
			}
			line := fmt.Sprintf("    %s %s/%s", o.Kind, o.Metadata.Namespace, o.Metadata.Name)
			if o.Kind == "WorkloadEntry" {
				line += fmt.Sprintf(" (address %v, weight %v, locality %v)", o.Spec["address"], o.Spec["weight"], o.Spec["locality"])
			}
			lines = append(lines, line)
		}
		if len(lines) == 0 {
			lines = []string{"    <none>"}
		}
		fmt.Fprintf(e.out, "  %s:\n%s\n", c.GetMetadata().GetName(), strings.Join(lines, "\n"))
	}
	return nil
}

func newDescribeCmd(e *env) *cobra.Command {
	var parents parentFlags
	cmd := &cobra.Command{
		Use:   "describe KIND NAME",
		Short: "Show a resource in detail: metadata, spec, status, children and recent changes",
		Long: `Show a resource in detail: metadata, spec, status, children and recent changes.
"describe service NAMESPACE/NAME" shows a fleet service instead: its instance
in each cluster, and the objects generated for it in each cluster.
"describe istio CLUSTER" shows Istio's control plane in a cluster: each
revision that an IstioInstallation wants there or that runs there.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "service" || args[0] == "services" || args[0] == "svc" {
				return e.describeService(cmd, args[1])
			}
			if args[0] == "istio" {
				return e.describeIstio(cmd, args[1])
			}
			k, r, err := e.findArg(cmd, args[0], args[1], &parents)
			if err != nil {
				return err
			}
			md := r.GetMetadata()
			w := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "Name:\t%s\n", md.GetName())
			fmt.Fprintf(w, "Kind:\t%s\n", r.GetKind())
			fmt.Fprintf(w, "FQN:\t%s\n", md.GetFqn())
			fmt.Fprintf(w, "Labels:\t%s\n", kv(md.GetLabels()))
			fmt.Fprintf(w, "Annotations:\t%s\n", kv(md.GetAnnotations()))
			fmt.Fprintf(w, "Created:\t%s\n", md.GetCreateTime().AsTime().Format(time.RFC3339))
			fmt.Fprintf(w, "Updated:\t%s\n", md.GetUpdateTime().AsTime().Format(time.RFC3339))
			fmt.Fprintf(w, "Etag:\t%s\n", md.GetEtag())
			w.Flush()
			for _, part := range []struct {
				title string
				m     proto.Message
			}{{"Spec", r.GetSpec()}, {"Status", r.GetStatus()}} {
				fmt.Fprintf(e.out, "%s:\n", part.title)
				if part.m == nil || len(r.GetStatus().GetFields()) == 0 && part.title == "Status" {
					fmt.Fprintln(e.out, "  <none>")
					continue
				}
				b, err := toYAML(part.m)
				if err != nil {
					return err
				}
				fmt.Fprint(e.out, indent(string(b), "  "))
			}
			var children []string
			for _, ck := range e.reg.Kinds() {
				if ck.Parent != k.Name {
					continue
				}
				all, err := e.listAll(cmd.Context(), &pb.ListRequest{Kind: ck.Name, Parent: md.GetFqn()})
				if err != nil {
					return err
				}
				var names []string
				for _, c := range all {
					if strings.Count(c.GetMetadata().GetFqn(), "/") == strings.Count(md.GetFqn(), "/")+2 {
						names = append(names, c.GetMetadata().GetName())
					}
				}
				if len(names) > 0 {
					children = append(children, fmt.Sprintf("  %s: %s", ck.Plural, strings.Join(names, ", ")))
				}
			}
			fmt.Fprintln(e.out, "Children:")
			if len(children) == 0 {
				fmt.Fprintln(e.out, "  <none>")
			}
			for _, c := range children {
				fmt.Fprintln(e.out, c)
			}
			audit, err := e.audit().ListAudit(cmd.Context(), connect.NewRequest(&pb.ListAuditRequest{Fqn: md.GetFqn(), Limit: 5}))
			if err != nil {
				return err
			}
			fmt.Fprintln(e.out, "Recent changes:")
			var own []*pb.AuditRecord
			for _, a := range audit.Msg.GetRecords() {
				if a.GetFqn() == md.GetFqn() {
					own = append(own, a)
				}
			}
			if len(own) == 0 {
				fmt.Fprintln(e.out, "  <none>")
			}
			printAudit(e.out, own, "  ")
			return nil
		},
	}
	parents.add(cmd)
	return cmd
}

func kv(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}

// listAll follows a list's pages to the end.
func (e *env) listAll(ctx context.Context, req *pb.ListRequest) ([]*pb.Resource, error) {
	var out []*pb.Resource
	for {
		res, err := e.resources().List(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		out = append(out, res.Msg.GetResources()...)
		if res.Msg.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = res.Msg.GetNextPageToken()
	}
}
