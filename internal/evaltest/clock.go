package evaltest

import (
	_ "embed"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

//go:embed testdata/clockshim.c
var clockShimSource []byte

var clockShim struct {
	once sync.Once
	path string
	err  error
}

// buildClockShim compiles testdata/clockshim.c once per test binary: an
// LD_PRELOAD library that steps a process's wall clock (not its monotonic
// one) by what a file says. It needs a C compiler (gcc).
func buildClockShim() (string, error) {
	clockShim.once.Do(func() {
		cc, err := exec.LookPath("gcc")
		if err != nil {
			clockShim.err = fmt.Errorf("evaltest: a stepped clock needs gcc (apt-get install gcc): %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "evalpool-clockshim-")
		if err != nil {
			clockShim.err = err
			return
		}
		src, lib := filepath.Join(dir, "clockshim.c"), filepath.Join(dir, "clockshim.so")
		if err := os.WriteFile(src, clockShimSource, 0o600); err != nil {
			clockShim.err = err
			return
		}
		if out, err := exec.Command(cc, "-shared", "-fPIC", "-O2", "-o", lib, src).CombinedOutput(); err != nil {
			clockShim.err = fmt.Errorf("evaltest: build the clock shim: %w: %s", err, out)
			return
		}
		clockShim.path = lib
	})
	return clockShim.path, clockShim.err
}

// clockEnv is the environment that runs a process under the clock shim,
// stepped by what the file at stepFile says (written by writeStep).
func clockEnv(stepFile string) ([]string, error) {
	lib, err := buildClockShim()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(stepFile); os.IsNotExist(err) {
		if err := writeStep(stepFile, 0); err != nil {
			return nil, err
		}
	}
	return append(os.Environ(), "LD_PRELOAD="+lib, "EVALPOOL_CLOCK_STEP_FILE="+stepFile), nil
}

func writeStep(stepFile string, d time.Duration) error {
	b := binary.LittleEndian.AppendUint64(nil, uint64(d.Nanoseconds()))
	return os.WriteFile(stepFile, b, 0o600)
}

// StepClock sets how far the server's wall clock is off the machine's: d
// later (negative: earlier), at once, as an NTP step or `date -s` on its
// host would, while its monotonic clock runs on. The server must have been
// started with Options.SteppableClock.
func (s *Server) StepClock(d time.Duration) error {
	if !s.opts.SteppableClock {
		return fmt.Errorf("evaltest: redis-server on %s was not started with a steppable clock", s.Addr)
	}
	return writeStep(s.stepFile(), d)
}

func (s *Server) stepFile() string { return filepath.Join(s.opts.Dir, "clock-step") }
