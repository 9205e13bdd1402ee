package harness

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Process is a flotilla child process of a benchmark (an agent, say); it is
// stopped when the benchmark ends.
type Process struct {
	b    testing.TB
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// StartProcess runs the flotilla binary with args, its output in logFile.
func StartProcess(b testing.TB, logFile string, args ...string) *Process {
	b.Helper()
	log, err := os.Create(logFile)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(FlotillaBin(b), args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &Process{b: b, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() { cmd.Wait(); log.Close(); close(p.done) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// Alive fails the benchmark if the agent has exited.
func (p *Process) Alive() {
	select {
	case <-p.done:
		p.b.Fatalf("the process exited: %v\nits log:\n%s", p.cmd.ProcessState, p.LogTail())
	default:
	}
}

// LogTail is the last 4 KiB of its log.
func (p *Process) LogTail() string {
	b, _ := os.ReadFile(p.log)
	return string(b[max(0, len(b)-4096):])
}

// CPU is the CPU time the process has used, user and system, in seconds.
func (p *Process) CPU() float64 {
	p.Alive()
	s, err := ProcCPU(p.cmd.Process.Pid)
	if err != nil {
		p.b.Fatal(err)
	}
	return s
}

// Mem is the process's resident set and its peak since the last
// ResetPeak, in MiB.
func (p *Process) Mem() (rss, peak float64) {
	p.Alive()
	rss, peak, err := ProcMem(p.cmd.Process.Pid)
	if err != nil {
		p.b.Fatal(err)
	}
	return rss, peak
}

func (p *Process) ResetPeak() {
	if err := ResetPeak(p.cmd.Process.Pid); err != nil {
		p.b.Fatalf("reset the process's peak RSS: %v", err)
	}
}

// Idle samples the process over d: the CPU it used as % of one core, and
// its RSS at the end.
func (p *Process) Idle(d time.Duration) (cpuPercent, rss float64) {
	cpu0, t0 := p.CPU(), time.Now()
	time.Sleep(d) // the sample's window, not a wait for a condition
	cpuPercent = (p.CPU() - cpu0) / time.Since(t0).Seconds() * 100
	rss, _ = p.Mem()
	return cpuPercent, rss
}
