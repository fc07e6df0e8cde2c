//go:build !unix

package refexec

import (
	"context"
	"os/exec"

	"github.com/rs/zerolog"
)

// command is the eval's command. Without process groups, cancelling it
// kills the command alone, not the children it forked.
func command(ctx context.Context, script string) *exec.Cmd {
	return exec.CommandContext(ctx, "sh", "-c", script)
}

// groups notes nothing: without process groups there is no group to end.
type groups struct{ dir string }

func (groups) start(cmd *exec.Cmd) (func(), error) { return func() {}, cmd.Start() }

// claimStateDir does nothing: the state directory is unix's.
func claimStateDir(context.Context, string, zerolog.Logger) (func(), error) { return func() {}, nil }
