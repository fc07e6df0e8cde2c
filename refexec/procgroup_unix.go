//go:build unix

package refexec

import (
	"os/exec"
	"syscall"
)

// inGroup runs cmd in a process group of its own, and makes cancelling it
// kill the whole group, so that a command that forked children leaves
// nothing running.
func inGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
