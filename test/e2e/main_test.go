// Package e2e drives the real flotilla binary the way a user does: it starts
// `flotilla server` as a process, runs CLI verbs against it, kills it, and
// checks what survives.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/testfleet"
)

// flotillaBin is the binary under test, built once by TestMain with the race
// detector; it runs the server and the agents. cliBin is the same code
// without it, for the many short CLI invocations (a race-enabled binary
// takes about a second just to start).
var flotillaBin, cliBin string

// repoRoot is the repository's top directory.
var repoRoot string

// fleet is two real clusters (c1, c2) shared by the package's tests.
var fleet *testfleet.Fleet

func TestMain(m *testing.M) {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	dir, err := os.MkdirTemp("", "flotilla-e2e-")
	if err != nil {
		panic(err)
	}
	flotillaBin, cliBin = filepath.Join(dir, "flotilla-race"), filepath.Join(dir, "flotilla")
	for _, b := range [][]string{{"-race", "-o", flotillaBin}, {"-o", cliBin}} {
		build := exec.Command("go", append(append([]string{"build"}, b...), "./cmd/flotilla")...)
		build.Dir = repoRoot
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build flotilla:", err)
			os.Exit(1)
		}
	}
	// c1 and c2 run Istio (CRDs, istio-system, istiod); c3 and c4 are
	// bare, for Flotilla to install Istio into (istiolifecycle_test.go),
	// and the istiod Deployments it makes there run as real istiods.
	f, err := testfleet.Start(testfleet.Options{Clusters: 4, Istio: true, Bare: 2, RunIstiods: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "testfleet:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	fleet = f
	code := m.Run()
	if err := writeMatrix(); err != nil {
		fmt.Fprintln(os.Stderr, "failure matrix:", err)
		code = max(code, 1)
	}
	if err := f.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testfleet: stop:", err)
		code = max(code, 1)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// process is a flotilla process the test started; it is killed when the
// test ends.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

// startProcess runs the flotilla binary with args in dir.
func startProcess(t *testing.T, dir string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(flotillaBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, cmd: cmd, log: log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("log of %v:\n%s", args, log.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits (killing after 20 s); it is idempotent.
func (p *process) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// server is a running `flotilla server` process.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	url  string
	log  *syncBuffer
	done chan error

	client *http.Client // for /readyz

	// config is the CLI's config file for this server: `flotilla login`
	// with the bootstrap credential wrote it (see login).
	config string
	// token is an access token of the bootstrap administrator, for calls
	// the tests make without the CLI.
	token string
	// caFile is the CA of an https server's certificate.
	caFile string
}

// bootstrapFile is where a server started in dir wrote its bootstrap
// administrator credential.
func bootstrapFile(dir string) string {
	return filepath.Join(dir, "flotilla-data", "bootstrap-admin")
}

// login logs the CLI in to s with the bootstrap credential in file, the way
// the quickstart does, and gets a token for the tests' own calls.
func (s *server) login(file string) {
	s.t.Helper()
	s.config = filepath.Join(s.t.TempDir(), "config.yaml")
	var env []string
	if s.caFile != "" {
		env = append(env, "FLOTILLA_CA_FILE="+s.caFile)
	}
	if r := s.flotillaEnv(env, "", "login", "--bootstrap-file", file); r.code != 0 {
		s.t.Fatalf("flotilla login: %+v\nserver log:\n%s", r, s.log)
	}
	secret, err := os.ReadFile(file)
	if err != nil {
		s.t.Fatal(err)
	}
	tok, err := flotillav1alpha1connect.NewIdentityServiceClient(s.client, s.url).Token(context.Background(),
		connect.NewRequest(&pb.TokenRequest{Grant: &pb.TokenRequest_BootstrapCredential{BootstrapCredential: strings.TrimSpace(string(secret))}}))
	if err != nil {
		s.t.Fatal(err)
	}
	s.token = tok.Msg.GetAccessToken()
}

// authGet is an authenticated GET of a plain HTTP endpoint (/metrics).
func (s *server) authGet(path string) (*http.Response, error) {
	req, err := http.NewRequest("GET", s.url+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	return s.client.Do(req)
}

// startServer runs `flotilla server` in dir with args plus --listen, and
// waits until it is ready. The process is killed when the test ends.
func startServer(t *testing.T, dir string, args ...string) *server {
	t.Helper()
	return startServerTLS(t, dir, "", args...)
}

// startServerTLS is startServer for a server whose certificate is caFile
// (cleartext when caFile is empty).
func startServerTLS(t *testing.T, dir, caFile string, args ...string) *server {
	t.Helper()
	scheme, client := "http", http.DefaultClient
	if caFile != "" {
		pemBytes, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemBytes)
		scheme, client = "https", &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	return runServer(t, dir, scheme, client, caFile, append([]string{"server", "--listen", freePort(t)}, args...))
}

// restart starts the server again, with the same arguments and address,
// once the previous process is gone (kill9 or stop it first).
func (s *server) restart(t *testing.T) *server {
	t.Helper()
	return runServer(t, s.cmd.Dir, strings.SplitN(s.url, "://", 2)[0], s.client, s.caFile, s.cmd.Args[1:])
}

// stop ends the server with SIGTERM (a graceful shutdown) and waits.
func (s *server) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	<-s.done
}

func runServer(t *testing.T, dir, scheme string, client *http.Client, caFile string, args []string) *server {
	t.Helper()
	addr := args[2] // server --listen ADDR ...
	cmd := exec.Command(flotillaBin, args...)
	cmd.Dir = dir
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cmd: cmd, addr: addr, url: scheme + "://" + addr, log: log, done: make(chan error, 1), client: client, caFile: caFile}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("server log:\n%s", log)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(s.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if _, err := os.Stat(bootstrapFile(dir)); err == nil {
					s.login(bootstrapFile(dir))
				}
				return s
			}
		}
		select {
		case err := <-s.done:
			t.Fatalf("server exited before ready: %v\n%s", err, log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("server not ready after 30s:\n%s", log)
	return nil
}

// kill9 kills the server the hard way and waits for it to be gone.
func (s *server) kill9() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		s.t.Fatal(err)
	}
	<-s.done
}

// result is what one CLI invocation did.
type result struct {
	stdout, stderr string
	code           int
}

// flotilla runs the CLI against s with stdin.
func (s *server) flotilla(stdin string, args ...string) result {
	s.t.Helper()
	return s.flotillaEnv(nil, stdin, args...)
}

// flotillaEnv runs the CLI against s with extra environment and stdin.
func (s *server) flotillaEnv(env []string, stdin string, args ...string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBin, args...)
	cmd.Dir = repoRoot
	config := s.config
	if config == "" { // never the user's own config file
		config = filepath.Join(s.t.TempDir(), "no-config.yaml")
	}
	cmd.Env = append(append(os.Environ(), "FLOTILLA_SERVER="+s.url, "FLOTILLA_CONFIG="+config), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("flotilla %v: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// must runs the CLI and fails the test unless it exits 0.
func (s *server) must(args ...string) string {
	s.t.Helper()
	r := s.flotilla("", args...)
	if r.code != 0 {
		s.t.Fatalf("flotilla %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}
