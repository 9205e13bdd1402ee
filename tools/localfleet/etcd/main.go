// Command etcd runs a single-member etcd server for the local fleet.
//
// It is a thin wrapper around go.etcd.io/etcd/server/v3/embed, because the
// etcd server module cannot be installed with `go install`. It serves plain
// HTTP on loopback and is meant for tests and demos only: fsync is off.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	dataDir := flag.String("data-dir", "", "directory for etcd's data (required)")
	clientURL := flag.String("listen-client-url", "http://127.0.0.1:2379", "URL to serve clients on")
	peerURL := flag.String("listen-peer-url", "http://127.0.0.1:2380", "URL to serve peers on")
	name := flag.String("name", "default", "member name")
	flag.Parse()
	if err := run(*dataDir, *clientURL, *peerURL, *name); err != nil {
		slog.Error("etcd failed", "err", err)
		os.Exit(1)
	}
}

func run(dataDir, clientURL, peerURL, name string) error {
	if dataDir == "" {
		return fmt.Errorf("--data-dir is required")
	}
	client, err := url.Parse(clientURL)
	if err != nil {
		return fmt.Errorf("parse --listen-client-url: %w", err)
	}
	peer, err := url.Parse(peerURL)
	if err != nil {
		return fmt.Errorf("parse --listen-peer-url: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dataDir
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(name)
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		return fmt.Errorf("etcd was not ready within 60s")
	case <-stop:
		return nil
	}
	// States: serving until a signal asks us to stop or the server fails.
	select {
	case err := <-e.Err():
		return fmt.Errorf("etcd serving: %w", err)
	case <-stop:
		return nil
	}
}
