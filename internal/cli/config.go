package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"
	"sigs.k8s.io/yaml"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/authn"
)

// Config is the client's config file: named contexts, each a server and a
// way to log in to it, like a kubeconfig.
type Config struct {
	CurrentContext string     `json:"current-context,omitempty"`
	Contexts       []*Context `json:"contexts,omitempty"`
}

// Context is one server and how to log in to it.
type Context struct {
	Name   string `json:"name"`
	Server string `json:"server"`
	CAFile string `json:"ca-file,omitempty"`
	// One of these says how to get a new token when the cached one expires.
	BootstrapFile         string `json:"bootstrap-file,omitempty"`
	ServiceAccountKeyFile string `json:"service-account-key-file,omitempty"`
	OIDC                  *OIDC  `json:"oidc,omitempty"`
	// Token is the cached access token.
	Token       string    `json:"token,omitempty"`
	TokenExpiry time.Time `json:"token-expiry,omitempty"`
}

// OIDC is a person's login through the server's OIDC provider.
type OIDC struct {
	Issuer       string `json:"issuer"`
	ClientID     string `json:"client-id"`
	RefreshToken string `json:"refresh-token,omitempty"`
}

// configPath is $FLOTILLA_CONFIG, or flotilla/config.yaml in the user's
// config directory.
func configPath() (string, error) {
	if p := os.Getenv("FLOTILLA_CONFIG"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory (set FLOTILLA_CONFIG): %w", err)
	}
	return filepath.Join(dir, "flotilla", "config.yaml"), nil
}

func loadConfig() (*Config, string, error) {
	path, err := configPath()
	if err != nil {
		return nil, "", err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Config{}, path, nil
	} else if err != nil {
		return nil, path, err
	}
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, path, fmt.Errorf("%s: %w (fix it, or remove it and log in again)", path, err)
	}
	return &c, path, nil
}

// save writes the config atomically, readable by its owner only (it holds tokens).
func (c *Config) save(path string) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func (c *Config) context(name string) *Context {
	for _, x := range c.Contexts {
		if x.Name == name {
			return x
		}
	}
	return nil
}

func (c *Config) put(x *Context) {
	for i, old := range c.Contexts {
		if old.Name == x.Name {
			c.Contexts[i] = x
			return
		}
	}
	c.Contexts = append(c.Contexts, x)
}

// current returns the context the command uses: --context, or the current one.
func (e *env) current() (*Context, error) {
	if e.cfg == nil {
		return nil, nil
	}
	name := e.contextName
	if name == "" {
		name = e.cfg.CurrentContext
	}
	if name == "" {
		return nil, nil
	}
	x := e.cfg.context(name)
	if x == nil && e.contextName != "" {
		return nil, fmt.Errorf("--context %q: no such context in %s (`flotilla login --context %s` makes it)", name, e.cfgPath, name)
	}
	return x, nil
}

// tokenSlack renews a cached token this long before it expires.
const tokenSlack = time.Minute

// token returns an access token for the server: $FLOTILLA_TOKEN, the
// context's cached token, or a new one from the context's credential.
func (e *env) token(ctx context.Context) (string, error) {
	if t := os.Getenv("FLOTILLA_TOKEN"); t != "" {
		return t, nil
	}
	if e.cachedToken != "" {
		return e.cachedToken, nil
	}
	x, err := e.current()
	if err != nil {
		return "", err
	}
	if x == nil {
		return "", errors.New("not logged in: run `flotilla login` (the bootstrap credential is in the server's data directory, file bootstrap-admin)")
	}
	if x.Token != "" && time.Until(x.TokenExpiry) > tokenSlack && x.Server == e.server {
		e.cachedToken = x.Token
		return x.Token, nil
	}
	res, err := e.exchange(ctx, x)
	if err != nil {
		return "", err
	}
	x.Token, x.TokenExpiry = res.GetAccessToken(), res.GetExpireTime().AsTime()
	if err := e.cfg.save(e.cfgPath); err != nil {
		fmt.Fprintf(e.errOut, "warning: could not cache the token in %s: %v\n", e.cfgPath, err)
	}
	e.cachedToken = x.Token
	return x.Token, nil
}

// exchange gets a new access token with the context's credential.
func (e *env) exchange(ctx context.Context, x *Context) (*pb.TokenResponse, error) {
	req := &pb.TokenRequest{}
	switch {
	case x.BootstrapFile != "":
		b, err := os.ReadFile(x.BootstrapFile)
		if err != nil {
			return nil, fmt.Errorf("context %s: read the bootstrap credential: %w", x.Name, err)
		}
		req.Grant = &pb.TokenRequest_BootstrapCredential{BootstrapCredential: strings.TrimSpace(string(b))}
	case x.ServiceAccountKeyFile != "":
		kf, err := authn.ReadServiceAccountKeyFile(x.ServiceAccountKeyFile)
		if err != nil {
			return nil, fmt.Errorf("context %s: %w", x.Name, err)
		}
		// The assertion is for this server only: its audience is the
		// server's issuer (servers before it had one took "flotilla").
		audience := authn.Audience
		if cfg, err := e.identity().GetLoginConfig(ctx, connect.NewRequest(&pb.GetLoginConfigRequest{})); err != nil {
			return nil, err
		} else if cfg.Msg.GetIssuer() != "" {
			audience = cfg.Msg.GetIssuer()
		}
		a, err := kf.SignAssertion(time.Now(), audience)
		if err != nil {
			return nil, fmt.Errorf("context %s: sign with %s: %w", x.Name, x.ServiceAccountKeyFile, err)
		}
		req.Grant = &pb.TokenRequest_ServiceAccountAssertion{ServiceAccountAssertion: a}
	case x.OIDC != nil && x.OIDC.RefreshToken != "":
		conf, err := e.oidcConfig(ctx, x.OIDC)
		if err != nil {
			return nil, err
		}
		tok, err := conf.TokenSource(e.oauthContext(ctx), &oauth2.Token{RefreshToken: x.OIDC.RefreshToken}).Token()
		if err != nil {
			return nil, fmt.Errorf("context %s: your login expired (%v): run `flotilla login --oidc` again", x.Name, err)
		}
		if tok.RefreshToken != "" {
			x.OIDC.RefreshToken = tok.RefreshToken
		}
		id, _ := tok.Extra("id_token").(string)
		req.Grant = &pb.TokenRequest_OidcIdToken{OidcIdToken: id}
	default:
		return nil, fmt.Errorf("context %s: your token expired and the context has no credential to renew it: run `flotilla login` again", x.Name)
	}
	res, err := e.identity().Token(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func (e *env) identity() flotillav1alpha1connect.IdentityServiceClient {
	return flotillav1alpha1connect.NewIdentityServiceClient(e.httpClient(), strings.TrimSuffix(e.server, "/"), e.clientOptions()...)
}

// clientOptions are the options of every API client: the access token on
// every call that needs one.
func (e *env) clientOptions() []connect.ClientOption {
	return []connect.ClientOption{connect.WithInterceptors(&bearer{e: e})}
}

// bearer puts the access token on calls.
type bearer struct{ e *env }

var publicProcedures = map[string]bool{
	flotillav1alpha1connect.IdentityServiceTokenProcedure:          true,
	flotillav1alpha1connect.IdentityServiceGetLoginConfigProcedure: true,
}

// carriesCredential says whether a call sends a credential: an access
// token, or a grant to exchange for one (Token's bootstrap credential,
// service-account assertion or OIDC ID token).
func carriesCredential(procedure string) bool {
	return !publicProcedures[procedure] || procedure == flotillav1alpha1connect.IdentityServiceTokenProcedure
}

func (b *bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if carriesCredential(req.Spec().Procedure) {
			b.e.warnClearText()
		}
		if !publicProcedures[req.Spec().Procedure] {
			tok, err := b.e.token(ctx)
			if err != nil {
				return nil, err
			}
			req.Header().Set("Authorization", "Bearer "+tok)
		}
		return next(ctx, req)
	}
}

func (b *bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		b.e.warnClearText()
		conn := next(ctx, spec)
		if tok, err := b.e.token(ctx); err == nil {
			conn.RequestHeader().Set("Authorization", "Bearer "+tok)
		}
		return conn
	}
}

func (b *bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func decodeB64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
