// Package cli is the flotilla command: the server and the kubectl-like
// client verbs (apply, get, describe, delete, audit, version). Commands parse
// flags and print; the work happens in the packages they call.
package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/resource"
)

// Version is the release, set at build time with -ldflags "-X ...cli.Version=v1.2.3".
var Version = "dev"

// DefaultServer is where the client verbs connect unless --server or
// FLOTILLA_SERVER says otherwise.
const DefaultServer = "http://127.0.0.1:8080"

// env carries what every command shares.
type env struct {
	server      string
	caFile      string
	contextName string
	cfg         *Config // the client config file
	cfgPath     string
	cachedToken string
	tlsConfig   *tls.Config // from --ca-file; nil for the system roots
	reg         *resource.Registry
	out         io.Writer
	errOut      io.Writer
	in          io.Reader

	// warnedClearText: the clear-text warning was printed (once a process).
	warnedClearText bool
}

// ExitError makes Execute return a specific exit code after the command has
// already printed what went wrong.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// NewRoot builds the flotilla command tree.
func NewRoot(in io.Reader, out, errOut io.Writer) *cobra.Command {
	e := &env{reg: resource.Builtin(), out: out, errOut: errOut, in: in}
	root := &cobra.Command{
		Use:           "flotilla",
		Short:         "Operate a fleet of Istio service meshes",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := e.loadConfig(cmd); err != nil {
				return err
			}
			return e.loadTLS()
		},
	}
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	defaultServer := DefaultServer
	if s := os.Getenv("FLOTILLA_SERVER"); s != "" {
		defaultServer = s
	}
	root.PersistentFlags().StringVar(&e.server, "server", defaultServer, "management plane URL (env FLOTILLA_SERVER)")
	root.PersistentFlags().StringVar(&e.caFile, "ca-file", os.Getenv("FLOTILLA_CA_FILE"), "PEM CA bundle that signs an https:// server's certificate, instead of the system roots (env FLOTILLA_CA_FILE)")
	root.PersistentFlags().StringVar(&e.contextName, "context", os.Getenv("FLOTILLA_CONTEXT"), "context of the config file to use (env FLOTILLA_CONTEXT; default: the current one)")
	root.AddCommand(
		newServerCmd(e),
		newApplyCmd(e),
		newGetCmd(e),
		newDescribeCmd(e),
		newDeleteCmd(e),
		newAuditCmd(e),
		newVersionCmd(e),
		newAgentCmd(e),
		newClusterCmd(e),
		newStatusCmd(e),
		newPlanCmd(e),
		newLoginCmd(e),
		newWhoamiCmd(e),
		newAuthCmd(e),
		newServiceAccountCmd(e),
		newCreateCmd(e),
	)
	return root
}

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	root := NewRoot(os.Stdin, os.Stdout, os.Stderr)
	root.SetArgs(args)
	err := root.Execute()
	var exit *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.Code
	default:
		fmt.Fprintln(os.Stderr, "error:", describeError(err))
		return 1
	}
}

// describeError turns an RPC error into one line a user can act on.
func describeError(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err.Error()
	}
	if ce.Code() == connect.CodeUnavailable || ce.Code() == connect.CodeUnknown && strings.Contains(ce.Message(), "connection refused") {
		return fmt.Sprintf("cannot reach the management plane: %s (is `flotilla server` running? set --server or FLOTILLA_SERVER)", ce.Message())
	}
	return ce.Message()
}

// loadConfig reads the config file and takes the server and CA file from
// the context, unless a flag or the environment names them.
func (e *env) loadConfig(cmd *cobra.Command) error {
	cfg, path, err := loadConfig()
	if err != nil {
		return err
	}
	e.cfg, e.cfgPath = cfg, path
	if cmd.Name() == "login" {
		return nil // login makes the context; the flags say where
	}
	x, err := e.current()
	if err != nil || x == nil {
		return err
	}
	if !cmd.Flags().Changed("server") && os.Getenv("FLOTILLA_SERVER") == "" {
		e.server = x.Server
	}
	if !cmd.Flags().Changed("ca-file") && os.Getenv("FLOTILLA_CA_FILE") == "" && x.CAFile != "" {
		e.caFile = x.CAFile
	}
	return nil
}

// httpClient reaches the server: HTTP/1.1 or HTTP/2, trusting --ca-file for
// https when given.
func (e *env) httpClient() *http.Client {
	if e.caFile == "" {
		return http.DefaultClient
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = e.tlsConfig
	return &http.Client{Transport: t}
}

// loadTLS reads --ca-file once, before any command runs.
func (e *env) loadTLS() error {
	if e.caFile == "" {
		return nil
	}
	pem, err := os.ReadFile(e.caFile)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("--ca-file %s: no PEM certificate in it", e.caFile)
	}
	e.tlsConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return nil
}

func (e *env) resources() flotillav1alpha1connect.ResourceServiceClient {
	return flotillav1alpha1connect.NewResourceServiceClient(e.httpClient(), strings.TrimSuffix(e.server, "/"), e.clientOptions()...)
}

func (e *env) audit() flotillav1alpha1connect.AuditServiceClient {
	return flotillav1alpha1connect.NewAuditServiceClient(e.httpClient(), strings.TrimSuffix(e.server, "/"), e.clientOptions()...)
}

// violations extracts the per-field details of a server error.
func violations(err error) []*pb.Violation {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	var out []*pb.Violation
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if vs, ok := v.(*pb.Violations); ok {
				out = append(out, vs.GetViolations()...)
			}
		}
	}
	return out
}

// kindArg resolves a kind named on the command line.
func (e *env) kindArg(name string) (*resource.Kind, error) {
	k, ok := e.reg.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("unknown kind %q: known kinds are %s", name, e.reg.Names())
	}
	return k, nil
}

// parentFlags are --org, --tenant, --workspace and --group.
type parentFlags struct{ org, tenant, workspace, group string }

func (p *parentFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.org, "org", "", "organization")
	cmd.Flags().StringVar(&p.tenant, "tenant", "", "tenant")
	cmd.Flags().StringVar(&p.workspace, "workspace", "", "workspace")
	cmd.Flags().StringVar(&p.group, "group", "", "group")
}

func (p *parentFlags) metadata(name string) *pb.Metadata {
	return &pb.Metadata{Name: name, Organization: p.org, Tenant: p.tenant, Workspace: p.workspace, Group: p.group}
}

// ancestor is the FQN prefix the flags pin down, as far as they go from the root.
func (p *parentFlags) ancestor(e *env) string {
	var parts []string
	for _, step := range []struct{ kind, name string }{
		{resource.KindOrganization, p.org}, {resource.KindTenant, p.tenant},
		{resource.KindWorkspace, p.workspace}, {resource.KindGroup, p.group},
	} {
		if step.name == "" {
			break
		}
		k, _ := e.reg.Kind(step.kind)
		parts = append(parts, k.Plural, step.name)
	}
	return strings.Join(parts, "/")
}

// filter keeps the resources whose parents match every flag given, for
// flags that ancestor could not express (e.g. --workspace without --org).
func (p *parentFlags) filter(list []*pb.Resource) []*pb.Resource {
	var out []*pb.Resource
	for _, r := range list {
		md := r.GetMetadata()
		if (p.org == "" || md.GetOrganization() == p.org) && (p.tenant == "" || md.GetTenant() == p.tenant) &&
			(p.workspace == "" || md.GetWorkspace() == p.workspace) && (p.group == "" || md.GetGroup() == p.group) {
			out = append(out, r)
		}
	}
	return out
}
