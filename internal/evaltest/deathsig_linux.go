package evaltest

import "syscall"

// setDeathSignal kills the server when the test binary dies, so that a test
// killed by a timeout leaves no redis-server behind.
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }

// ownGroup puts the server in a process group of its own, away from the
// terminal's Ctrl-C.
func ownGroup(a *syscall.SysProcAttr) { a.Setpgid = true }
