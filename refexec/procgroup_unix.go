//go:build unix

package refexec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// leader is the shell that leads an eval's process group. It waits for the
// executor's go-ahead on fd 3, sent once the group is noted in the state
// directory (an executor that dies before that closes the pipe, and
// nothing runs); then it runs the eval's command in the background, so that
// a TERM, which Linux sends when the executor dies (dieWithParent), is
// handled at once: it kills the whole group, the command's children with
// it. Its exit status is the command's.
const leader = `trap 'kill -KILL 0' TERM
read -r go <&3 || exit 125
exec 3<&- 4<&0
sh -c "$1" <&4 4<&- &
exec 4<&-
wait $!`

// command is the eval's command, run by a leader in a process group of its
// own, whose cancelling kills the whole group.
func command(ctx context.Context, script string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "sh", "-c", leader, "evalpool-exec", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	dieWithParent(cmd.SysProcAttr)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// start starts cmd, notes its group in the state directory, if there is
// one, then gives its leader the go-ahead. The returned func forgets the
// group, once cmd has ended.
func (g groups) start(cmd *exec.Cmd) (forget func(), err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.ExtraFiles = []*os.File{r}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, err
	}
	forget, err = g.note(cmd.Process.Pid)
	if err == nil {
		_, _ = w.Write([]byte("\n")) // a leader already gone is cmd.Wait's to report
	}
	w.Close() // without the go-ahead, the leader exits without running the command
	if err != nil {
		_ = cmd.Wait()
		return nil, err
	}
	return forget, nil
}

// groups is the state directory: one file per running command, named
// PGID.group, holding the group ID and the identity of its leader (its
// start time), so that a restarted executor ends the groups its
// predecessor left, and never a process that merely reuses the ID.
type groups struct{ dir string }

const groupSuffix = ".group"

// note records the group led by pid, and returns the func that forgets it.
func (g groups) note(pid int) (func(), error) {
	if g.dir == "" {
		return func() {}, nil
	}
	id, err := startTime(pid)
	if err != nil {
		return nil, fmt.Errorf("note process group %d: %w", pid, err)
	}
	path := filepath.Join(g.dir, strconv.Itoa(pid)+groupSuffix)
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+" "+id+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("note process group %d: %w", pid, err)
	}
	return func() { _ = os.Remove(path) }, nil
}

// sweepTimeout bounds the wait for a killed group to be gone.
const sweepTimeout = 5 * time.Second

// claimStateDir makes dir the state directory of this process: it creates
// it (owner only), refuses one another user could write to, locks it (one
// executor per directory: another's sweep would kill this one's commands),
// and ends every group noted in it whose leader still runs. It returns the
// func that unlocks it.
func claimStateDir(ctx context.Context, dir string, log zerolog.Logger) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("refexec: state dir: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("refexec: state dir: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("refexec: state dir %s: want a directory of this user that no other may write to, got %s", dir, fi.Mode())
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("refexec: state dir: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("refexec: state dir %s is in use by another executor", dir)
		}
		return nil, fmt.Errorf("refexec: lock state dir %s: %w", dir, err)
	}
	unlock = func() { lock.Close() }
	if err := sweep(ctx, dir, log); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// sweep ends the groups noted in dir: a group whose leader runs with the
// noted identity is SIGKILLed and awaited; a note whose leader is gone, or
// is another process now, is only removed.
func sweep(ctx context.Context, dir string, log zerolog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("refexec: state dir: %w", err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), groupSuffix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("refexec: state dir: %w", err)
		}
		pgidText, id, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		pgid, err := strconv.Atoi(pgidText)
		switch {
		case err != nil || pgid <= 1 || id == "" || pgid == syscall.Getpgrp():
			log.Warn().Str("file", path).Msg("executor: removed an unreadable process group note")
		case !sameLeader(pgid, id):
		default:
			if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("refexec: kill process group %d left by a previous executor: %w", pgid, err)
			}
			if err := awaitGone(ctx, pgid); err != nil {
				return err
			}
			log.Warn().Int("pgid", pgid).Msg("executor: killed a command a previous executor left running")
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("refexec: state dir: %w", err)
		}
	}
	return nil
}

// sameLeader reports whether the process pgid still leads its group and is
// the one noted (its identity id), not a process that reused the ID.
func sameLeader(pgid int, id string) bool {
	now, err := startTime(pgid)
	if err != nil || now != id {
		return false
	}
	got, err := syscall.Getpgid(pgid)
	return err == nil && got == pgid
}

// awaitGone waits until no process of group pgid runs, up to sweepTimeout.
func awaitGone(ctx context.Context, pgid int) error {
	ctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	for groupRunning(pgid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("refexec: process group %d, left by a previous executor, still runs after SIGKILL (%w): not serving beside it", pgid, context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}
