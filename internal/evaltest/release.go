package evaltest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Release builds the evalpool command of an older release, rev (a commit of
// this repository), and returns the binary's path, so that a test can have
// a pool written by that release's own code. It is built once per machine,
// into the temporary directory. It needs a git checkout that holds rev, as
// every clone of the repository does.
func Release(t testing.TB, rev string) string {
	t.Helper()
	bin := filepath.Join(os.TempDir(), "evalpool-release-"+rev, "evalpool")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err == nil {
		err = exec.Command("git", "-C", strings.TrimSpace(string(root)), "cat-file", "-e", rev+"^{commit}").Run()
	}
	if err != nil {
		t.Fatalf("evaltest: release %s: no git checkout holds it: %v", rev, err)
	}
	src := t.TempDir()
	var out bytes.Buffer
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", strings.TrimSpace(string(root)), rev, src)
	archive.Stdout, archive.Stderr = &out, &out
	if err := archive.Run(); err != nil {
		t.Fatalf("evaltest: release %s: unpack: %v\n%s", rev, err, out.String())
	}
	// Built beside bin and renamed into place, so that a test that runs at
	// the same time never finds half a binary.
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := bin + "." + filepath.Base(src)
	build := exec.Command("go", "build", "-o", tmp, "./cmd/evalpool")
	build.Dir, build.Stdout, build.Stderr = src, &out, &out
	if err := build.Run(); err != nil {
		t.Fatalf("evaltest: release %s: go build: %v\n%s", rev, err, out.String())
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}
