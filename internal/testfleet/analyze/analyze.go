// Package analyze runs Istio's own analyzers, the code behind `istioctl
// analyze`, over a local-fleet cluster or over YAML files, and judges what
// they report:
//
//	Cluster(REST config) ─┐                           ┌─ Error/Warning on an object Flotilla manages,
//	                      ├─▶ local.IstiodAnalyzer ─▶ │  not a known limitation: the test fails
//	Files(YAML sources) ──┘   (analyzers.All())       └─ anything else: logged
//
// An object is Flotilla's when it carries the label
// app.kubernetes.io/managed-by=flotilla and the flotilla.io/owner
// annotation, as every object the compiler emits does. The analyzers'
// known limitations are listed once, in limitations.go, each for one exact
// object or condition, never for a whole code.
//
// The analyzers are called as a library, from the istio.io/istio module
// that istiod is built from, so they judge with the same code as the
// control plane under test.
package analyze

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"istio.io/istio/pkg/config/analysis"
	"istio.io/istio/pkg/config/analysis/analyzers"
	"istio.io/istio/pkg/config/analysis/diag"
	"istio.io/istio/pkg/config/analysis/local"
	"istio.io/istio/pkg/config/resource"
	"istio.io/istio/pkg/kube"
	istiolog "istio.io/istio/pkg/log"

	"flotilla.io/flotilla/internal/compile"
)

// IstioNamespace is the root namespace of the local fleet's istiod
// (tools/localfleet runs it with POD_NAMESPACE=istio-system and no mesh
// config file, so Istio's default root namespace applies), which is where
// the analyzers look for the mesh config and the control plane.
const IstioNamespace = "istio-system"

// timeout bounds one analysis: the informers' initial sync and the run.
const timeout = time.Minute

// allAnalyzers is every analyzer istioctl runs, built once. Each analysis
// combines them afresh: a CombinedAnalyzer drops, in place, the analyzers
// whose inputs a source lacks (RemoveSkipped), so one cannot be shared.
var allAnalyzers = sync.OnceValue(analyzers.All)

func combined() analysis.CombinedAnalyzer {
	quiet()
	return analysis.Combine("all", allAnalyzers()...)
}

// quiet lowers to warnings the Istio log scopes an analysis writes to at
// info level (a line per informer synced), for the whole test binary.
var quiet = sync.OnceFunc(func() {
	for _, name := range []string{"default", "krt", "analysis", "kube", "controllers"} {
		if s := istiolog.FindScope(name); s != nil {
			s.SetOutputLevel(istiolog.WarnLevel)
		}
	}
})

// Finding is one message of the analyzers.
type Finding struct {
	// Code and Level are the message type's, e.g. "IST0101" and "Error".
	Code, Level string
	// Kind, Namespace and Name identify the object the message is on; all
	// are empty for a message on no object.
	Kind, Namespace, Name string
	// Text is the analyzer's message.
	Text string
	// Managed says the object is Flotilla's (label and owner annotation).
	Managed bool
	// Limitation is the known analyzer limitation that covers the finding,
	// or nil.
	Limitation *Limitation

	msg diag.Message
}

// Fails reports whether the finding fails a test: an Error or a Warning on
// an object Flotilla manages that no known limitation covers.
func (f Finding) Fails() bool {
	return f.Managed && f.Limitation == nil && (f.Level == diag.Error.String() || f.Level == diag.Warning.String())
}

// String is "Warning [IST0174] DestinationRule shop/flotilla-default: text".
func (f Finding) String() string {
	s := f.Level + " [" + f.Code + "] "
	if f.Kind != "" {
		s += f.Kind + " " + f.Namespace + "/" + f.Name + ": "
	}
	return s + f.Text
}

// Source is one YAML stream for Files, like a file given to `istioctl
// analyze`.
type Source struct {
	Name string
	YAML []byte
}

// Cluster analyzes every namespace of the cluster cfg reaches, as `istioctl
// analyze --all-namespaces` does against a live cluster, with the istio
// namespace IstioNamespace and the mesh config found there (Istio's
// defaults when there is none, as for the fleet's istiod).
func Cluster(ctx context.Context, cfg *rest.Config) ([]Finding, error) {
	client, err := kube.NewClient(kube.NewClientConfigForRestConfig(rest.CopyConfig(cfg)), "")
	if err != nil {
		return nil, fmt.Errorf("analyze: kube client for %s: %w", cfg.Host, err)
	}
	defer client.Shutdown()
	sa := local.NewIstiodAnalyzer(combined(), "", IstioNamespace, nil)
	sa.AddRunningKubeSource(kube.EnableCrdWatcher(client))
	findings, err := run(ctx, sa)
	if err != nil {
		return nil, fmt.Errorf("analyze cluster %s: %w", cfg.Host, err)
	}
	return findings, nil
}

// Files analyzes YAML sources offline, as `istioctl analyze --use-kube=false
// -A` does with files, with one difference: Services, Namespaces and Pods
// in the sources are analyzed too (istioctl drops them from files), so that
// a caller can supply the cluster the objects are meant for.
func Files(ctx context.Context, sources ...Source) ([]Finding, error) {
	sa := local.NewIstiodAnalyzer(combined(), "", IstioNamespace, nil)
	readers := make([]local.ReaderSource, 0, len(sources))
	for _, s := range sources {
		readers = append(readers, local.ReaderSource{Name: s.Name, Reader: strings.NewReader(string(s.YAML))})
	}
	if err := sa.AddTestReaderKubeSource(readers); err != nil {
		return nil, fmt.Errorf("analyze: read sources: %w", err)
	}
	// No AddDefaultResources, which istioctl adds to files: a Pod and
	// Service of a default istio-ingressgateway in istio-system, whose Pod a
	// Gateway's selector {istio: ingressgateway} then matches beside the
	// sources' own, so that the namespace the analyzer looks up the
	// Gateway's credentialName in depends on map order. The sources supply
	// the cluster, gateways included.
	return run(ctx, sa)
}

// run analyzes, stopping the sources' informers when it returns.
func run(ctx context.Context, sa *local.IstiodAnalyzer) ([]Finding, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The analyzer waits on stop alone: ctx closes it early.
	stop := make(chan struct{})
	var once sync.Once
	closeStop := func() { once.Do(func() { close(stop) }) }
	defer closeStop()
	defer context.AfterFunc(ctx, closeStop)()
	result, err := sa.Analyze(stop)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("not done within %s: %w", timeout, ctx.Err())
	}
	out := make([]Finding, 0, len(result.Messages))
	for _, m := range result.Messages {
		out = append(out, finding(m))
	}
	return out, nil
}

func finding(m diag.Message) Finding {
	f := Finding{
		Code:  m.Type.Code(),
		Level: m.Type.Level().String(),
		Text:  fmt.Sprintf(m.Type.Template(), m.Parameters...),
		msg:   m,
	}
	if r := m.Resource; r != nil {
		f.Kind = r.Metadata.Schema.Kind()
		f.Namespace, f.Name = r.Metadata.FullName.Namespace.String(), r.Metadata.FullName.Name.String()
		f.Managed = r.Metadata.Labels[compile.LabelManagedBy] == compile.ManagedBy && r.Metadata.Annotations[compile.AnnotationOwner] != ""
	}
	f.Limitation = limitationFor(f)
	return f
}

// resource returns the instance the finding is on, or nil.
func (f Finding) resource() *resource.Instance { return f.msg.Resource }

// Check fails t for each finding that Fails and logs every other one, with
// where (a cluster's name, a file) in each line.
func Check(t testing.TB, where string, findings []Finding) {
	t.Helper()
	for _, f := range findings {
		switch {
		case f.Fails():
			t.Errorf("istio analyzers, %s: %s (on an object Flotilla manages)", where, f)
		case f.Limitation != nil:
			t.Logf("istio analyzers, %s: %s (known analyzer limitation: %s, %s)", where, f, f.Limitation.Reason, f.Limitation.Source)
		default:
			t.Logf("istio analyzers, %s: %s", where, f)
		}
	}
}

// CheckCluster analyzes the cluster called name, reached with cfg, and
// judges the findings with Check; it fails t if the analysis cannot run.
func CheckCluster(t testing.TB, name string, cfg *rest.Config) {
	t.Helper()
	start := time.Now()
	findings, err := Cluster(context.Background(), cfg)
	if err != nil {
		t.Errorf("istio analyzers, cluster %s: %v", name, err)
		return
	}
	t.Logf("istio analyzers, cluster %s: %d messages in %s", name, len(findings), time.Since(start).Round(time.Millisecond))
	Check(t, "cluster "+name, findings)
}
