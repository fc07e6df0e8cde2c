//go:build !linux

package redistest

import "syscall"

func setDeathSignal(*syscall.SysProcAttr) {}
