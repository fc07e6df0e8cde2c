//go:build unix && !linux

package refexec

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// dieWithParent does nothing: only Linux tells a process its parent died.
// The state directory ends what a dead executor left, at its restart.
func dieWithParent(*syscall.SysProcAttr) {}

// startTime identifies process pid by its start time, which a process
// reusing the ID does not share.
func startTime(pid int) (string, error) {
	out, err := exec.Command("ps", "-o", "lstart=", "-p", strconv.Itoa(pid)).Output()
	if s := strings.TrimSpace(string(out)); err == nil && s != "" {
		return strings.Join(strings.Fields(s), "_"), nil
	}
	return "", errors.New("process " + strconv.Itoa(pid) + " not found")
}

// groupRunning reports whether a process of group pgid exists.
func groupRunning(pgid int) bool { return syscall.Kill(-pgid, 0) == nil }
