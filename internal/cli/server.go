package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"flotilla.io/flotilla/internal/access"
	"flotilla.io/flotilla/internal/agentauth"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/authn"
	"flotilla.io/flotilla/internal/central"
	"flotilla.io/flotilla/internal/gslb"
	"flotilla.io/flotilla/internal/gslb/rule"
	"flotilla.io/flotilla/internal/plane"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func newServerCmd(e *env) *cobra.Command {
	var dnsKubeconfigs, gslbAllow []string
	var listen, dnsListen, tsigFile, dataDir, storeArg, logLevel, tlsCert, tlsKey, debugListen string
	var keyFile, issuer, oidcIssuer, oidcClient, oidcCA, bootstrapSecretName, kubeconfig string
	var insecure, resetBootstrap bool
	var agentTTL, bootstrapTTL time.Duration
	var trustedProxies []string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the management plane",
		Long: `Run the management plane: the API (gRPC, gRPC-Web and JSON on one port),
the store and the audit log. With no flags it keeps its data in an embedded
SQLite file under ./flotilla-data; --store postgres://... uses PostgreSQL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			allow, err := rule.ParseCIDRs(gslbAllow)
			if err != nil {
				return fmt.Errorf("--gslb-allow-cidr: %w", err)
			}
			if debugListen != "" {
				if err := requireLoopback(debugListen); err != nil {
					return fmt.Errorf("--debug-listen %s: %w: the profiling endpoints have no authentication and show the command line (a --store URL's password included), so they serve this host only; reach them from elsewhere through an SSH tunnel", debugListen, err)
				}
			}
			if bootstrapTTL < time.Minute {
				return fmt.Errorf("--bootstrap-credential-ttl %s: give at least 1m", bootstrapTTL)
			}
			var bootstrapCopy *bootstrapSecret
			switch {
			case bootstrapSecretName != "":
				if bootstrapCopy, err = newBootstrapSecret(kubeconfig, bootstrapSecretName); err != nil {
					return err
				}
			case kubeconfig != "":
				return fmt.Errorf("--kubeconfig is the cluster of --bootstrap-secret: give both, or neither")
			}
			log := slog.New(slog.NewTextHandler(e.errOut, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			st, desc, err := openStore(ctx, storeArg, dataDir)
			if err != nil {
				return err
			}
			defer st.Close()
			if n, err := access.BindCreators(ctx, st); err != nil {
				return fmt.Errorf("give the creators of older nodes their bindings: %w", err)
			} else if n > 0 {
				log.Info("creators of older nodes given their admin bindings (revocable AccessBindings)", "nodes", n)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			var opts []apiserver.Option
			proxies, err := apiserver.ParseTrustedProxies(trustedProxies)
			if err != nil {
				return fmt.Errorf("--trusted-proxy: %w", err)
			}
			opts = append(opts, apiserver.WithTrustedProxies(proxies))
			switch {
			case tlsCert != "" && tlsKey != "":
				opts = append(opts, apiserver.WithTLS(tlsCert, tlsKey))
			case tlsCert != "" || tlsKey != "":
				return fmt.Errorf("--tls-cert and --tls-key go together: give both, or neither for cleartext")
			default:
				if requireLoopback(ln.Addr().String()) != nil {
					log.Warn("serving cleartext HTTP on a non-loopback address: access tokens, credentials and agent secrets cross the network readable by anyone on the path; give --tls-cert and --tls-key, or put a TLS-terminating proxy in front (with --trusted-proxy)", "addr", ln.Addr().String())
				}
			}
			auth, err := serverAuth(ctx, e, st, dataDir, keyFile, issuer, oidcIssuer, oidcClient, oidcCA, insecure, resetBootstrap, bootstrapTTL, bootstrapCopy)
			if err != nil {
				return err
			}
			opts = append(opts, apiserver.WithAuth(auth))
			if agentTTL < time.Second {
				return fmt.Errorf("--agent-credential-ttl %s: give at least 1s", agentTTL)
			}
			var dnsOpts gslb.Options
			if tsigFile != "" {
				data, err := os.ReadFile(tsigFile)
				if err != nil {
					return fmt.Errorf("--dns-tsig-keys: %w", err)
				}
				if dnsOpts.TSIGKeys, err = gslb.ParseKeyFile(data); err != nil {
					return fmt.Errorf("--dns-tsig-keys %s: %w", tsigFile, err)
				}
			}
			for _, kc := range dnsKubeconfigs {
				name, file, ok := strings.Cut(kc, "=")
				if !ok || name == "" || file == "" {
					return fmt.Errorf("--dns-kubeconfig %q: write NAME=FILE, e.g. dns=/etc/flotilla/dns-cluster.kubeconfig", kc)
				}
				cfg, err := clientcmd.BuildConfigFromFlags("", file)
				if err != nil {
					return fmt.Errorf("--dns-kubeconfig %s: %w", kc, err)
				}
				dyn, err := dynamic.NewForConfig(cfg)
				if err != nil {
					return fmt.Errorf("--dns-kubeconfig %s: %w", kc, err)
				}
				if dnsOpts.Clusters == nil {
					dnsOpts.Clusters = map[string]dynamic.Interface{}
				}
				dnsOpts.Clusters[name] = dyn
			}
			p, err := plane.New(e.reg, st, log, plane.Config{API: opts, Shared: strings.HasPrefix(storeArg, "postgres"),
				Central: []central.Option{central.WithAgentCredentialTTL(agentTTL)}, DNSListen: dnsListen, DNS: dnsOpts, GSLBAllow: allow})
			if err != nil {
				return err
			}
			if debugListen != "" {
				dl, err := net.Listen("tcp", debugListen)
				if err != nil {
					return fmt.Errorf("--debug-listen %s: %w", debugListen, err)
				}
				go serveDebug(ctx, dl, log)
			}
			log.Info("management plane serving", "addr", ln.Addr().String(), "store", desc, "version", Version)
			return p.Run(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve the API on")
	cmd.Flags().StringArrayVar(&dnsKubeconfigs, "dns-kubeconfig", nil, "NAME=FILE: a cluster where DNSZones with provider EXTERNAL_DNS (spec.externalDns.kubeconfig NAME) write DNSEndpoint objects for external-dns (repeatable)")
	cmd.Flags().StringVar(&tsigFile, "dns-tsig-keys", "", "BIND key file (as tsig-keygen writes it) with the TSIG keys that sign updates of DNSZones with provider RFC2136")
	cmd.Flags().StringVar(&dnsListen, "dns-listen", "", "address (UDP and TCP) of the built-in authoritative DNS server for the DNSZones with provider BUILTIN, e.g. 127.0.0.1:5353; off when empty")
	cmd.Flags().StringArrayVar(&gslbAllow, "gslb-allow-cidr", nil, "CIDR range that DNSRecordSets' health checks may reach although no cluster reports it, e.g. 10.20.0.0/16 (repeatable); loopback, link-local and this host's own addresses only when a range covers them")
	cmd.Flags().StringArrayVar(&trustedProxies, "trusted-proxy", nil, "CIDR (or address) of a proxy in front of the server whose X-Forwarded-For names the client, for rate limits and the audit (repeatable); from other peers the header is ignored")
	cmd.Flags().StringVar(&debugListen, "debug-listen", "", "address of Go's profiling endpoints (/debug/pprof/), without authentication: a loopback address only; off when empty")
	cmd.Flags().StringVar(&dataDir, "data-dir", "./flotilla-data", "directory for the embedded store and local state")
	cmd.Flags().StringVar(&storeArg, "store", "sqlite", `"sqlite" (at <data-dir>/flotilla.db) or a postgres://… URL`)
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "PEM certificate (chain) to serve HTTPS with; cleartext when unset")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	cmd.Flags().StringVar(&keyFile, "signing-key-file", "", "file of the keys that sign access tokens (default <data-dir>/"+apiserver.SigningKeyFile+"; created when missing; back it up with the store, and give replicas the same file)")
	cmd.Flags().StringVar(&issuer, "issuer", "flotilla", "the iss of the access tokens this server issues; replicas share it")
	cmd.Flags().StringVar(&oidcIssuer, "oidc-issuer", "", "URL of the OIDC provider people log in with (flotilla login --oidc)")
	cmd.Flags().StringVar(&oidcClient, "oidc-client-id", "flotilla", "the OIDC client id of the CLI and the UI")
	cmd.Flags().StringVar(&oidcCA, "oidc-ca-file", "", "PEM CA bundle of the OIDC provider's certificate, instead of the system roots")
	cmd.Flags().DurationVar(&agentTTL, "agent-credential-ttl", agentauth.DefaultTTL, "life of an agent's credential; the agent's stream extends it when a third is left (never past a year from its join)")
	cmd.Flags().BoolVar(&insecure, "insecure-no-auth", false, "serve every caller as the administrator, with no login: only for throwaway demos")
	cmd.Flags().BoolVar(&resetBootstrap, "reset-bootstrap-credential", false, "replace the bootstrap administrator credential (the old one and its sessions stop working; a disabled one is enabled again) and write the new one to <data-dir>/"+apiserver.BootstrapAdminFile+" (and to --bootstrap-secret)")
	cmd.Flags().StringVar(&bootstrapSecretName, "bootstrap-secret", "", "Kubernetes Secret of the server's namespace to write the bootstrap administrator credential to as well (key "+apiserver.BootstrapAdminFile+"), for a server in a pod, whose data directory cannot be read: it must exist (the Helm chart makes it), and the server only patches it")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster of --bootstrap-secret, whose context names the server's namespace (default: in a pod, its service account and namespace)")
	cmd.Flags().DurationVar(&bootstrapTTL, "bootstrap-credential-ttl", apiserver.DefaultBootstrapTTL, "life of the bootstrap administrator credential from when it is made; after it, log in another way or --reset-bootstrap-credential")
	return cmd
}

// serverAuth sets up authentication: the signing keys, the OIDC provider,
// and on first start the bootstrap administrator credential, written to a
// 0600 file of the data directory (and to bootstrapCopy, when set) and
// never printed (logs are read by more people than the administrator).
func serverAuth(ctx context.Context, e *env, st store.Store, dataDir, keyFile, issuer, oidcIssuer, oidcClient, oidcCA string, insecure, reset bool, bootstrapTTL time.Duration, bootstrapCopy *bootstrapSecret) (*apiserver.Auth, error) {
	if keyFile == "" {
		keyFile = filepath.Join(dataDir, apiserver.SigningKeyFile)
	}
	auth, err := apiserver.NewAuth(keyFile, issuer)
	if err != nil {
		return nil, fmt.Errorf("--signing-key-file: %w", err)
	}
	if oidcIssuer != "" {
		auth.OIDC = &authn.OIDC{Issuer: oidcIssuer, ClientID: oidcClient}
		if oidcCA != "" {
			pem, err := os.ReadFile(oidcCA)
			if err != nil {
				return nil, fmt.Errorf("--oidc-ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--oidc-ca-file %s: no PEM certificate in it", oidcCA)
			}
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			auth.OIDC.Client = &http.Client{Transport: t, Timeout: 30 * time.Second}
		}
	}
	if insecure {
		auth.Insecure = true
		fmt.Fprintln(e.errOut, strings.Repeat("!", 78))
		fmt.Fprintln(e.errOut, "!! --insecure-no-auth: EVERY caller is the administrator, with no login.")
		fmt.Fprintln(e.errOut, "!! Anyone who reaches this port can change or delete the whole fleet's config.")
		fmt.Fprintln(e.errOut, "!! Use it only for a throwaway demo on a machine nobody else can reach.")
		fmt.Fprintln(e.errOut, strings.Repeat("!", 78))
	}
	path := filepath.Join(dataDir, apiserver.BootstrapAdminFile)
	auth.BootstrapTTL, auth.BootstrapFile = bootstrapTTL, path
	if bootstrapCopy != nil {
		auth.BootstrapCopy = bootstrapCopy
	}
	ensure := auth.EnsureBootstrap
	if reset {
		ensure = auth.ResetBootstrap
	}
	b, err := ensure(ctx, st, path, bootstrapTTL)
	if err != nil {
		return nil, fmt.Errorf("create the bootstrap credential: %w", err)
	}
	abs, _ := filepath.Abs(path)
	switch {
	case b.Written && bootstrapCopy != nil:
		fmt.Fprintf(e.errOut, "Bootstrap administrator credential written to %s (mode 0600) and to %s, good until %s.\nFetch it and log in with:\n  kubectl -n %s get secret %s -o jsonpath='{.data.%s}' | base64 -d > %s\n  flotilla login --bootstrap-file %s\nThen bind administrators of your own and disable it: flotilla auth bootstrap disable\n",
			abs, bootstrapCopy, b.Expires.UTC().Format(time.RFC3339), bootstrapCopy.namespace, bootstrapCopy.name, apiserver.BootstrapAdminFile, apiserver.BootstrapAdminFile, apiserver.BootstrapAdminFile)
	case b.Written:
		fmt.Fprintf(e.errOut, "Bootstrap administrator credential written to %s (mode 0600), good until %s.\nLog in with: flotilla login --bootstrap-file %s\nThen bind administrators of your own and disable it: flotilla auth bootstrap disable\n",
			abs, b.Expires.UTC().Format(time.RFC3339), abs)
	case b.Disabled:
		fmt.Fprintln(e.errOut, "The bootstrap administrator credential is disabled; --reset-bootstrap-credential, on this host, makes a new one.")
	}
	return auth, nil
}

// requireLoopback refuses a host:port whose host is not a loopback
// address or "localhost" (an empty host means every address).
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if loopbackHost(host) {
		return nil
	}
	if host == "" {
		return errors.New("not a loopback address (an empty host is every address)")
	}
	return errors.New("not a loopback address")
}

func openStore(ctx context.Context, arg, dataDir string) (store.Store, string, error) {
	switch {
	case arg == "sqlite":
		path := filepath.Join(dataDir, "flotilla.db")
		st, err := sqlite.Open(ctx, path)
		return st, "sqlite:" + path, err
	case strings.HasPrefix(arg, "postgres://"), strings.HasPrefix(arg, "postgresql://"):
		st, err := postgres.Open(ctx, arg)
		return st, "postgres", err
	default:
		return nil, "", fmt.Errorf("--store %q: use \"sqlite\" or a postgres://user@host:5432/db URL", arg)
	}
}

// serveDebug serves Go's profiles (net/http/pprof) on ln until ctx ends.
// They carry no authentication, so the flag's help says loopback only.
func serveDebug(ctx context.Context, ln net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("profiling endpoints serving", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && ctx.Err() == nil {
		log.Error("profiling endpoints stopped", "err", err)
	}
}
