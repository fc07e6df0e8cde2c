package main

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/executor"
)

// Markers the environment's secrets are set to: none may be printed.
const (
	redisPassword  = "redis-pass-MARKER-7f3a"
	executorSecret = "exec-secret-MARKER-91c2"
)

// secretEnv is the environment of an evalpool process whose Redis URL and
// executor secret hold the markers.
func secretEnv(redisURL string) []string {
	return append(os.Environ(), "EVALPOOL_TEST_MAIN=1",
		"EVALPOOL_REDIS_URL="+redisURL,
		executor.EnvSecret+"="+executorSecret,
	)
}

// runBinary runs this test binary as evalpool (TestMain) with env, and
// returns its exit code and everything it printed.
func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok { //nolint:errorlint // exec returns it unwrapped
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("evalpool %s: %v", strings.Join(args, " "), err)
	}
	return 0, string(out)
}

// commandPaths is every command of the tree, as the arguments that name it.
func commandPaths(c *cobra.Command, prefix []string) [][]string {
	var paths [][]string
	for _, sub := range c.Commands() {
		if sub.Hidden {
			continue
		}
		path := append(append([]string(nil), prefix...), sub.Name())
		paths = append(paths, path)
		paths = append(paths, commandPaths(sub, path)...)
	}
	return paths
}

// No flag default holds a secret of the environment: the help of every
// command, and the usage a bare group prints, name the variables, never
// their values.
func TestHelpPrintsNoSecret(t *testing.T) {
	t.Parallel()
	env := secretEnv("redis://user:" + redisPassword + "@127.0.0.1:1/0")
	root := (&app{stdout: io.Discard, stderr: io.Discard}).rootCommand()
	cmds := [][]string{{"--help"}}
	for _, path := range commandPaths(root, nil) {
		cmds = append(cmds, append(path, "--help"))
	}
	// A group run bare prints its usage, with the global flags.
	for _, sub := range root.Commands() {
		if sub.HasSubCommands() {
			cmds = append(cmds, []string{sub.Name()})
		}
	}
	if len(cmds) < 30 {
		t.Fatalf("walked %d commands: the tree walk is broken", len(cmds))
	}
	for _, args := range cmds {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			_, out := runBinary(t, env, args...)
			for _, marker := range []string{redisPassword, executorSecret} {
				if strings.Contains(out, marker) {
					t.Errorf("evalpool %s printed a secret of the environment (%s):\n%s", strings.Join(args, " "), marker, out)
				}
			}
			if strings.Contains(strings.Join(args, " "), "--help") && !strings.Contains(out, "Usage:") {
				t.Errorf("evalpool %s printed no usage:\n%s", strings.Join(args, " "), out)
			}
		})
	}
}

// The environment still gives what the flags do not, and a Redis URL's
// password stays out of every error that names the URL.
func TestEnvSecretsReachTheCommandsRedacted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		redisURL string
		args     []string
		wantCode int
		want     string
	}{
		// The URL from the environment is used (its host is unreachable)
		// and named in the error, its password masked.
		{"unreachable", "redis://user:" + redisPassword + "@127.0.0.1:1/0", []string{"pool", "status"}, exitError, "redis://user:xxxxx@127.0.0.1:1/0"},
		{"bad port", "redis://user:" + redisPassword + "@127.0.0.1:port/0", []string{"pool", "status"}, exitUsage, "bad Redis URL"},
		{"sentinel password option", "redis-sentinel://127.0.0.1:1/0?master=m&sentinel_password=" + redisPassword + "&bogus=1", []string{"pool", "status"}, exitUsage, "sentinel_password=xxxxx"},
		{"worker", "redis://:" + redisPassword + "@127.0.0.1:1/0", []string{"worker", "--concurrency", "1"}, exitError, "redis://:xxxxx@127.0.0.1:1/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out := runBinary(t, secretEnv(tc.redisURL), tc.args...)
			if code != tc.wantCode || !strings.Contains(out, tc.want) {
				t.Errorf("evalpool %s: exit %d, want %d and output holding %q:\n%s", strings.Join(tc.args, " "), code, tc.wantCode, tc.want, out)
			}
			for _, marker := range []string{redisPassword, executorSecret} {
				if strings.Contains(out, marker) {
					t.Errorf("evalpool %s printed a secret (%s):\n%s", strings.Join(tc.args, " "), marker, out)
				}
			}
		})
	}
}
