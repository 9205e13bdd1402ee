package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/plane"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/postgres"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func newServerCmd(e *env) *cobra.Command {
	var listen, dataDir, storeArg, logLevel, tlsCert, tlsKey string
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
			log := slog.New(slog.NewTextHandler(e.errOut, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			st, desc, err := openStore(ctx, storeArg, dataDir)
			if err != nil {
				return err
			}
			defer st.Close()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			var opts []apiserver.Option
			switch {
			case tlsCert != "" && tlsKey != "":
				opts = append(opts, apiserver.WithTLS(tlsCert, tlsKey))
			case tlsCert != "" || tlsKey != "":
				return fmt.Errorf("--tls-cert and --tls-key go together: give both, or neither for cleartext")
			}
			p, err := plane.New(e.reg, st, log, plane.Config{API: opts, Shared: strings.HasPrefix(storeArg, "postgres")})
			if err != nil {
				return err
			}
			log.Info("management plane serving", "addr", ln.Addr().String(), "store", desc, "version", Version)
			return p.Run(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve the API on")
	cmd.Flags().StringVar(&dataDir, "data-dir", "./flotilla-data", "directory for the embedded store and local state")
	cmd.Flags().StringVar(&storeArg, "store", "sqlite", `"sqlite" (at <data-dir>/flotilla.db) or a postgres://… URL`)
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "PEM certificate (chain) to serve HTTPS with; cleartext when unset")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	return cmd
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
