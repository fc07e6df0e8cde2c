package evaltest

import (
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
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

// buildClockShim compiles testdata/clockshim.c, once per source and
// machine, into the temporary directory: an LD_PRELOAD library that steps a
// process's wall clock (not its monotonic one) by what a file says. It
// needs a C compiler (gcc).
func buildClockShim() (string, error) {
	clockShim.once.Do(func() {
		sum := sha256.Sum256(clockShimSource)
		lib := filepath.Join(os.TempDir(), "evalpool-clockshim-"+hex.EncodeToString(sum[:6])+".so")
		if _, err := os.Stat(lib); err == nil {
			clockShim.path = lib
			return
		}
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
		defer os.RemoveAll(dir)
		src, out := filepath.Join(dir, "clockshim.c"), filepath.Join(dir, "clockshim.so")
		if err := os.WriteFile(src, clockShimSource, 0o600); err != nil {
			clockShim.err = err
			return
		}
		if b, err := exec.Command(cc, "-shared", "-fPIC", "-O2", "-o", out, src).CombinedOutput(); err != nil {
			clockShim.err = fmt.Errorf("evaltest: build the clock shim: %w: %s", err, b)
			return
		}
		// A rename, so that test binaries building it at once never load
		// half a file.
		if err := os.Rename(out, lib); err != nil {
			clockShim.err = err
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

// writeStep writes the step in place, never truncating the file: a
// process that maps it would die of SIGBUS reading it while it is empty.
func writeStep(stepFile string, d time.Duration) error {
	f, err := os.OpenFile(stepFile, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(binary.LittleEndian.AppendUint64(nil, uint64(d.Nanoseconds())), 0)
	return errors.Join(err, f.Close())
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
