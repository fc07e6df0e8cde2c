package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pipPackages are the Debian packages a python3 needs to pip install the
// client offline: venv's ensurepip (and the pip it installs), and the
// setuptools and wheel the build uses with --no-build-isolation.
const pipPackages = "python3-venv python3-setuptools python3-wheel"

// lookPipPython is the first python3 on PATH that can make a venv and
// build the client offline, or the test skipped where there is none
// (outside CI). A pyenv's python3 may lack wheel where Debian's has it.
func lookPipPython(t *testing.T) string {
	t.Helper()
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		python := filepath.Join(dir, "python3")
		if dir == "" || exec.Command(python, "-c", "import ensurepip, setuptools, wheel").Run() != nil {
			continue
		}
		return python
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no python3 on PATH with venv (ensurepip), setuptools and wheel; .ci/run installs " + pipPackages)
	}
	t.Skip("no python3 on PATH with venv (ensurepip), setuptools and wheel: apt-get install " + pipPackages)
	return ""
}

// TestPythonPip installs the client as a user does, pip install
// ./examples/python, offline into a venv, and runs the evalpool-client
// command it installs against a real API: the flags of run submit reach the
// run, and it exits as the script does.
func TestPythonPip(t *testing.T) {
	t.Parallel()
	python := lookPipPython(t)
	s := startPyStack(t, true)
	// A copy: setuptools builds in the source tree, which stays clean.
	src, venv := filepath.Join(t.TempDir(), "python"), filepath.Join(t.TempDir(), "venv")
	if err := os.CopyFS(src, os.DirFS(clientDir)); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{python, "-m", "venv", "--system-site-packages", venv},
		{filepath.Join(venv, "bin", "pip"), "install", "--no-index", "--no-build-isolation", "--disable-pip-version-check", src},
	} {
		cmd := exec.CommandContext(t.Context(), args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "PIP_NO_INPUT=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	client := func(args ...string) result {
		cmd := exec.CommandContext(t.Context(), filepath.Join(venv, "bin", "evalpool-client"), append([]string{"--url", s.base}, args...)...)
		cmd.Env = append(os.Environ(), "EVALPOOL_AUTH_TOKEN="+pyToken)
		return runCmd(t, cmd)
	}
	suite := gradedSuite(t, 3)
	r := client("submit", suite, "--name", "pip", "--epochs", "2", "--meta", "model=m1", "--meta", "commit=abc",
		"--timeout", "60", "--max-retry", "1", "--retention", "1h")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "pip\n") || !strings.Contains(r.stderr, "under the 100.0% required (2 failed, 0 errored)") {
		t.Fatalf("submit with a failing eval, twice: %+v; want exit 1, gated", r)
	}
	cli := s.cli("run", "summary", "pip", "--json")
	var sum struct {
		Size   int               `json:"size"`
		Passed int               `json:"passed"`
		Epochs int               `json:"epochs"`
		Meta   map[string]string `json:"meta"`
	}
	if err := json.Unmarshal([]byte(cli.stdout), &sum); err != nil || cli.code != 0 {
		t.Fatalf("run summary --json: %+v: %v", cli, err)
	}
	if sum.Size != 20 || sum.Passed != 18 || sum.Epochs != 2 || sum.Meta["model"] != "m1" || sum.Meta["commit"] != "abc" {
		t.Errorf("the run submitted: %+v; want 20 evals (10, twice), 18 passed, 2 epochs, its meta", sum)
	}
	if r := client("summary", "pip", "--min-pass-rate", "0.9"); r.code != 0 || !strings.Contains(r.stdout, "  meta commit=abc model=m1\n") {
		t.Errorf("summary: %+v", r)
	}
	if r := client("submit", suite, "--epochs", "0"); r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "--epochs") {
		t.Errorf("a bad --epochs: %+v; want exit 2, one line", r)
	}
}
