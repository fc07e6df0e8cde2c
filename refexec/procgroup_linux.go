package refexec

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// dieWithParent has Linux send the group's leader a TERM when the executor
// dies, on which the leader kills its whole group. Linux sends it when the
// thread that started the leader ends, which in Go is only when a goroutine
// locked to its thread returns: nothing in the executor does.
func dieWithParent(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGTERM }

var bootID = sync.OnceValues(func() ([]byte, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return bytes.TrimSpace(b), err
})

// startTime identifies process pid: the boot, and its start time in clock
// ticks since that boot, which a process reusing the ID does not share.
func startTime(pid int) (string, error) {
	boot, err := bootID()
	if err != nil {
		return "", err
	}
	fields, err := procStat(pid)
	if err != nil {
		return "", err
	}
	const startField = 22 - 3 // fields counted from the state, the third
	if len(fields) <= startField {
		return "", errors.New("short /proc/" + strconv.Itoa(pid) + "/stat")
	}
	return string(boot) + "/" + string(fields[startField]), nil
}

// procStat returns the fields of /proc/PID/stat from the third (the state)
// on: the second, the command's name, may hold spaces.
func procStat(pid int) ([][]byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed /proc/" + strconv.Itoa(pid) + "/stat")
	}
	return bytes.Fields(b[i+1:]), nil
}

// groupRunning reports whether a process of group pgid runs: zombies,
// which hold nothing and wait for their reaper, do not count.
func groupRunning(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return syscall.Kill(-pgid, 0) == nil
	}
	want := []byte(strconv.Itoa(pgid))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err == nil && len(f) > 2 && bytes.Equal(f[2], want) && f[0][0] != 'Z' && f[0][0] != 'X' {
			return true
		}
	}
	return false
}
