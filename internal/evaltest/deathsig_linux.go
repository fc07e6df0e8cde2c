package evaltest

import "syscall"

// setDeathSignal kills the server when the test binary dies, so that a test
// killed by a timeout leaves no redis-server behind.
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
