package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/spf13/cobra"
	"golang.org/x/oauth2"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/authn"
)

func newLoginCmd(e *env) *cobra.Command {
	var bootstrapFile, keyFile string
	var useOIDC bool
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in to a management plane and save it as a context",
		Long: `Log in to the server (--server, FLOTILLA_SERVER, or the context's) and save
it as a context in the config file ($FLOTILLA_CONFIG, or flotilla/config.yaml
in your config directory), so later commands carry a token.

One way to log in:
  --bootstrap-file PATH       the administrator credential the server wrote on
                              first start (<data-dir>/bootstrap-admin)
  --service-account-key PATH  a key file from 'flotilla serviceaccount key create'
  --oidc                      the server's OIDC provider, by device code: open
                              the link shown, log in, and the command finishes`,
		Example: `  flotilla login --bootstrap-file ./flotilla-data/bootstrap-admin
  flotilla login --context prod --server https://flotilla.example.com --oidc
  flotilla login --service-account-key ci-key.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, set := range []bool{bootstrapFile != "", keyFile != "", useOIDC} {
				if set {
					n++
				}
			}
			if n != 1 {
				return errors.New("give one of --bootstrap-file, --service-account-key or --oidc")
			}
			name := e.contextName
			if name == "" {
				name = "default"
			}
			x := &Context{Name: name, Server: e.server, CAFile: e.caFile}
			ctx := cmd.Context()
			switch {
			case bootstrapFile != "":
				abs, err := filepath.Abs(bootstrapFile)
				if err != nil {
					return err
				}
				x.BootstrapFile = abs
			case keyFile != "":
				abs, err := filepath.Abs(keyFile)
				if err != nil {
					return err
				}
				if _, err := authn.ReadServiceAccountKeyFile(abs); err != nil {
					return err
				}
				x.ServiceAccountKeyFile = abs
			case useOIDC:
				cfg, err := e.identity().GetLoginConfig(ctx, connect.NewRequest(&pb.GetLoginConfigRequest{}))
				if err != nil {
					return err
				}
				if cfg.Msg.GetOidcIssuer() == "" {
					return fmt.Errorf("%s has no OIDC provider configured: log in with --bootstrap-file or --service-account-key", e.server)
				}
				x.OIDC = &OIDC{Issuer: cfg.Msg.GetOidcIssuer(), ClientID: cfg.Msg.GetOidcClientId()}
				id, refresh, err := e.deviceLogin(ctx, x.OIDC)
				if err != nil {
					return err
				}
				x.OIDC.RefreshToken = refresh
				res, err := e.identity().Token(ctx, connect.NewRequest(&pb.TokenRequest{Grant: &pb.TokenRequest_OidcIdToken{OidcIdToken: id}}))
				if err != nil {
					return err
				}
				x.Token, x.TokenExpiry = res.Msg.GetAccessToken(), res.Msg.GetExpireTime().AsTime()
			}
			if x.Token == "" {
				res, err := e.exchange(ctx, x)
				if err != nil {
					return err
				}
				x.Token, x.TokenExpiry = res.GetAccessToken(), res.GetExpireTime().AsTime()
			}
			e.cfg.put(x)
			e.cfg.CurrentContext = name
			if err := e.cfg.save(e.cfgPath); err != nil {
				return fmt.Errorf("save %s: %w", e.cfgPath, err)
			}
			sub, _ := subjectOf(x.Token)
			fmt.Fprintf(e.out, "logged in to %s as %s (context %q in %s)\n", x.Server, sub, name, e.cfgPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&bootstrapFile, "bootstrap-file", "", "the server's bootstrap administrator credential file")
	cmd.Flags().StringVar(&keyFile, "service-account-key", "", "a service account's key file")
	cmd.Flags().BoolVar(&useOIDC, "oidc", false, "log in through the server's OIDC provider (device code)")
	return cmd
}

// subjectOf reads the sub of a JWT without verifying it (for display).
func subjectOf(token string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", errors.New("not a JWT")
	}
	var c struct {
		Sub string `json:"sub"`
	}
	b, err := decodeB64(parts[1])
	if err != nil {
		return "", err
	}
	return c.Sub, json.Unmarshal(b, &c)
}

// oauthContext makes the OAuth client trust --ca-file.
func (e *env) oauthContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, e.httpClient())
}

// oidcConfig discovers the provider's endpoints.
func (e *env) oidcConfig(ctx context.Context, o *OIDC) (*oauth2.Config, error) {
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, e.httpClient()), o.Issuer)
	if err != nil {
		return nil, fmt.Errorf("the OIDC provider %s: %w", o.Issuer, err)
	}
	return &oauth2.Config{ClientID: o.ClientID, Endpoint: p.Endpoint(), Scopes: []string{oidc.ScopeOpenID, "email", "profile", "groups", oidc.ScopeOfflineAccess}}, nil
}

// deviceLogin runs the OAuth device-code flow: it prints where to go and
// the code, waits for the person to log in, and returns the ID token and
// the refresh token.
func (e *env) deviceLogin(ctx context.Context, o *OIDC) (idToken, refresh string, err error) {
	conf, err := e.oidcConfig(ctx, o)
	if err != nil {
		return "", "", err
	}
	if conf.Endpoint.DeviceAuthURL == "" {
		return "", "", fmt.Errorf("the OIDC provider %s offers no device-code login (no device_authorization_endpoint)", o.Issuer)
	}
	octx := e.oauthContext(ctx)
	da, err := conf.DeviceAuth(octx)
	if err != nil {
		return "", "", fmt.Errorf("start the device login at %s: %w", o.Issuer, err)
	}
	where := da.VerificationURIComplete
	if where == "" {
		where = da.VerificationURI
	}
	fmt.Fprintf(e.errOut, "To log in, open %s and enter the code %s\n", where, da.UserCode)
	wctx, cancel := context.WithTimeout(octx, 10*time.Minute)
	defer cancel()
	tok, err := conf.DeviceAccessToken(wctx, da)
	if err != nil {
		return "", "", fmt.Errorf("device login: %w", err)
	}
	id, _ := tok.Extra("id_token").(string)
	if id == "" {
		return "", "", errors.New("the OIDC provider returned no ID token: is the openid scope allowed for this client?")
	}
	return id, tok.RefreshToken, nil
}

func newWhoamiCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the server takes you for",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := e.identity().WhoAmI(cmd.Context(), connect.NewRequest(&pb.WhoAmIRequest{}))
			if err != nil {
				return err
			}
			m := res.Msg
			fmt.Fprintf(e.out, "subject: %s\nmethod:  %s\n", m.GetSubject(), m.GetMethod())
			if len(m.GetTeams()) > 0 {
				fmt.Fprintf(e.out, "teams:   %s\n", strings.Join(m.GetTeams(), ", "))
			}
			if len(m.GetGroups()) > 0 {
				fmt.Fprintf(e.out, "groups:  %s\n", strings.Join(m.GetGroups(), ", "))
			}
			if m.GetExpireTime() != nil {
				fmt.Fprintf(e.out, "expires: %s\n", m.GetExpireTime().AsTime().Local().Format(time.RFC3339))
			}
			return nil
		},
	}
}

func newAuthCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "auth", Short: "Check permissions and manage the server's signing keys"}
	var parents parentFlags
	canI := &cobra.Command{
		Use:   "can-i PERMISSION KIND NAME",
		Short: "Say whether you hold a permission on a resource (Read, Write, Create, Delete, SetPolicy)",
		Example: `  flotilla auth can-i Write workspace payments --org acme --tenant retail
  flotilla auth can-i Create virtualservice organizations/acme/tenants/t/workspaces/w/groups/g/virtualservices/new`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := e.kindArg(args[1])
			if err != nil {
				return err
			}
			fqn := args[2]
			if !strings.Contains(fqn, "/") {
				if fqn, err = e.reg.FQNOf(k, parents.metadata(fqn)); err != nil {
					return err
				}
			}
			res, err := e.identity().CanI(cmd.Context(), connect.NewRequest(&pb.CanIRequest{Permission: args[0], Kind: k.Name, Fqn: fqn}))
			if err != nil {
				return err
			}
			if res.Msg.GetAllowed() {
				fmt.Fprintf(e.out, "yes: %s\n", res.Msg.GetReason())
				return nil
			}
			fmt.Fprintf(e.out, "no: %s\n", res.Msg.GetReason())
			return &ExitError{Code: 1}
		},
	}
	parents.add(canI)
	keys := &cobra.Command{Use: "keys", Short: "The keys that sign and verify access tokens"}
	keys.AddCommand(&cobra.Command{
		Use: "list", Short: "List the signing keys (the first signs; all verify)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := e.identity().ListSigningKeys(cmd.Context(), connect.NewRequest(&pb.ListSigningKeysRequest{}))
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCREATED\tSIGNS")
			for _, k := range res.Msg.GetKeys() {
				fmt.Fprintf(tw, "%s\t%s\t%v\n", k.GetId(), k.GetCreateTime().AsTime().Format(time.RFC3339), k.GetSigning())
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use: "rotate", Short: "Make a new key the signer; older keys keep verifying until removed", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := e.identity().RotateSigningKey(cmd.Context(), connect.NewRequest(&pb.RotateSigningKeyRequest{}))
			if err != nil {
				return err
			}
			fmt.Fprintf(e.out, "signing key %s now signs; back up the key file again\n", res.Msg.GetKey().GetId())
			return nil
		},
	}, &cobra.Command{
		Use: "remove ID", Short: "Stop a key verifying: tokens it signed are refused", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := e.identity().RemoveSigningKey(cmd.Context(), connect.NewRequest(&pb.RemoveSigningKeyRequest{Id: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(e.out, "signing key %s removed\n", args[0])
			return nil
		},
	})
	bootstrap := &cobra.Command{Use: "bootstrap", Short: "The bootstrap administrator credential"}
	bootstrap.AddCommand(&cobra.Command{
		Use:   "disable",
		Short: "End the bootstrap credential and its sessions, once someone else administers every organization",
		Long: `End the bootstrap administrator credential and every session it opened. It is
refused until a person, team member or service account holds the admin role
(SetPolicy) on every organization, so that someone can still change access.
Only ` + "`flotilla server --reset-bootstrap-credential`" + `, on the server's host, makes a new one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := e.identity().DisableBootstrapCredential(cmd.Context(), connect.NewRequest(&pb.DisableBootstrapCredentialRequest{}))
			if err != nil {
				return err
			}
			fmt.Fprintf(e.out, "bootstrap credential disabled; administrators of every organization: %s\n", strings.Join(res.Msg.GetAdministrators(), ", "))
			return nil
		},
	})
	cmd.AddCommand(canI, keys, bootstrap)
	return cmd
}

func newServiceAccountCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "serviceaccount", Aliases: []string{"sa"}, Short: "Service accounts' keys"}
	key := &cobra.Command{Use: "key", Short: "Keys of a service account"}
	var org, out string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Add a key pair to a service account and save its private key (shown only this once)",
		Example: `  flotilla apply -f ci-account.yaml      # kind: ServiceAccount, name: ci
  flotilla serviceaccount key create ci --org acme -f ci-key.json
  flotilla login --service-account-key ci-key.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if org == "" {
				return errors.New("--org is required: the organization of the service account")
			}
			if out == "" {
				return errors.New("-f is required: the file to save the key in (written 0600; the server keeps no copy)")
			}
			fqn := "organizations/" + org + "/serviceaccounts/" + args[0]
			res, err := e.identity().CreateServiceAccountKey(cmd.Context(), connect.NewRequest(&pb.CreateServiceAccountKeyRequest{Fqn: fqn}))
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(authn.ServiceAccountKeyFile{Account: fqn, KeyID: res.Msg.GetKeyId(), PrivateKey: res.Msg.GetPrivateKey()}, "", "  ")
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, append(b, '\n'), 0o600); err != nil {
				return fmt.Errorf("save the key (it is lost; create another): %w", err)
			}
			fmt.Fprintf(e.out, "key %s of %s saved to %s\n", res.Msg.GetKeyId(), fqn, out)
			return nil
		},
	}
	create.Flags().StringVar(&org, "org", "", "organization of the service account")
	create.Flags().StringVarP(&out, "file", "f", "", "where to save the key file")
	key.AddCommand(create)
	cmd.AddCommand(key)
	return cmd
}
