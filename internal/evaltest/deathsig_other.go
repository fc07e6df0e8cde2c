//go:build !linux

package evaltest

import "syscall"

func setDeathSignal(*syscall.SysProcAttr) {}
