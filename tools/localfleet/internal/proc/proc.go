// Package proc starts and stops the server processes of the local fleet so
// that none of them can outlive the process that started it.
//
// Every child gets its own process group, so that a terminal's Ctrl-C reaches
// only its owner, which then stops the children in order. Every child also
// gets SIGKILL as its parent-death signal (Linux prctl PR_SET_PDEATHSIG), so
// that a crash or SIGKILL of the owner still takes its children down.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Process is a running child process. Its methods are safe for concurrent use.
type Process struct {
	// Name is a short label for messages, such as "etcd".
	Name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // set before done is closed
	// stopping is set by Stop and Kill before they signal the process.
	stopping atomic.Bool
}

// Start starts the executable at path with args and this process's
// environment plus env ("KEY=value"). The child's stdin is /dev/null and its
// stdout and stderr are appended to logPath.
func Start(name, path string, args, env []string, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logFile.Close() // the child holds its own copy of the descriptor
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitError describes how the process ended, after Done is closed, together
// with the end of its log.
func (p *Process) ExitError() error {
	<-p.done
	return fmt.Errorf("%s (pid %d) exited: %v; last lines of %s:\n%s", p.Name, p.PID(), p.err, p.logPath, Tail(p.logPath, 15))
}

// Stopping reports whether Stop or Kill has been called, so that an exit is
// one that was asked for.
func (p *Process) Stopping() bool { return p.stopping.Load() }

// Stop sends SIGTERM to the process group, waits up to grace for the process
// to exit, then sends SIGKILL to the group and waits for the exit.
func (p *Process) Stop(grace time.Duration) {
	p.stopping.Store(true)
	pgid := -p.PID()
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// Kill the group even after the leader exited: it takes any stragglers
	// that the leader left behind.
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	<-p.done
}

// Kill sends SIGKILL to the process group at once, as a crash would, and
// waits for the exit.
func (p *Process) Kill() {
	p.stopping.Store(true)
	_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	<-p.done
}

// Alive reports whether pid is a live, non-zombie process whose command line
// contains want. Checking the command line guards against reused pids.
func Alive(pid int, want string) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name: "pid (comm) S ...".
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte(want))
}

// WaitGone waits up to timeout until none of pids is Alive with its wanted
// command line. It returns the pids that are still alive.
func WaitGone(pids map[int]string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		var alive []int
		for pid, want := range pids {
			if Alive(pid, want) {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Signal sends sig to pid. A process that is already gone is not an error.
func Signal(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return nil
}

// Tail returns the last n lines of the file at path, or a note saying why it
// cannot.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
