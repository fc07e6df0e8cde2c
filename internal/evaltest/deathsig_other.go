//go:build !linux

package evaltest

import "syscall"

func setDeathSignal(*syscall.SysProcAttr) {}

func ownGroup(*syscall.SysProcAttr) {}
