//go:build unix

package dashboard

import "syscall"

// defaultMaxConns is DefaultMaxConns, or a third of the process's
// descriptor limit when that is lower: the rest is for Redis's
// connections, Asynqmon's and the process's files, and the cap keeps a
// descriptor free to accept (and then close) a connection past it.
func defaultMaxConns() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur/3 < DefaultMaxConns {
		return max(int(lim.Cur/3), 1)
	}
	return DefaultMaxConns
}
