package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/refexec"
)

// proc is an evalpool process: this test binary, run as main (TestMain).
type proc struct {
	t    *testing.T
	name string
	args []string
	cmd  *exec.Cmd
	log  *os.File
}

// startProc starts `evalpool ARGS...` as a process of its own, its output
// in NAME.log under procLogDir; it is SIGKILLed when the test ends.
func startProc(t *testing.T, name string, args ...string) *proc {
	p := &proc{t: t, name: name, args: args}
	p.start()
	t.Cleanup(func() { p.signal(syscall.SIGKILL); _ = p.log.Close() })
	return p
}

// start starts the process (again, after a kill), appending to its log.
func (p *proc) start() {
	var err error
	if p.log == nil {
		if p.log, err = os.Create(filepath.Join(procLogDir(p.t), p.name+".log")); err != nil {
			p.t.Fatal(err)
		}
	}
	p.cmd = exec.Command(os.Args[0], p.args...)
	p.cmd.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// signal sends sig to the process; after SIGKILL it also reaps it.
func (p *proc) signal(sig syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
		if sig == syscall.SIGKILL {
			_ = p.cmd.Wait()
		}
	}
}

// procLogDir keeps the processes' logs: EVALPOOL_CHAOS_DIR, or a temp dir.
func procLogDir(t *testing.T) string {
	if d := os.Getenv("EVALPOOL_CHAOS_DIR"); d != "" {
		_ = os.MkdirAll(d, 0o755)
		return d
	}
	return t.TempDir()
}

// executorStats reads a reference executor's counters (executor.PathStats).
func executorStats(url string) (refexec.Stats, error) {
	var st refexec.Stats
	resp, err := http.Get(url + executor.PathStats)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
