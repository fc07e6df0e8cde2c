package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
)

func TestCheckSecret(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  string // in the error; "" for none
	}{
		{"change-me-dashboard-token", "publishes"},
		{"CHANGE-ME-DASHBOARD-TOKEN", "publishes"},
		{"change-me", "publishes"},
		{"x7q2z", "5 bytes, shorter than 16"},
		{"0123456789abcde", "15 bytes"},
		{"0123456789abcdef", ""},
	} {
		err := checkSecret("the token", tc.value)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.value, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want an error saying %q", tc.value, err, tc.want)
		case err != nil && strings.Contains(err.Error(), tc.value):
			t.Errorf("%q: the error repeats the value: %v", tc.value, err)
		}
	}
}

func TestSecretFrom(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("from-the-file-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name            string
		flag, env, path string
		want, wantErr   string
	}{
		{name: "flag first", flag: "f", env: "e", path: file, want: "f"},
		{name: "env next", env: "e", path: file, want: "e"},
		{name: "file last, newline trimmed", path: file, want: "from-the-file-0123456789"},
		{name: "none", want: ""},
		{name: "missing file", path: filepath.Join(dir, "nope"), wantErr: "no such file"},
		{name: "empty file", path: empty, wantErr: "is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("EVALPOOL_TEST_SECRET", tc.env)
			t.Setenv("EVALPOOL_TEST_SECRET_FILE", tc.path)
			got, err := secretFrom(tc.flag, "EVALPOOL_TEST_SECRET")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want an error saying %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A dashboard refuses to start with a token anyone could know, and reads
// one from the file EVALPOOL_AUTH_TOKEN_FILE names. (Not parallel: it sets
// the environment.)
func TestDashboardRefusesKnownTokens(t *testing.T) {
	url := evaltest.URL(t)
	file := filepath.Join(t.TempDir(), "token")
	const fromFile = "file-token-0123456789abcdef"
	if err := os.WriteFile(file, []byte(fromFile+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		env, path string
		args      []string
		code      int // -1: serves
		stderr    string
	}{
		{"the compose file's default", "change-me-dashboard-token", "", nil, exitUsage, "publishes"},
		{"a short flag", "", "", []string{"--auth-token", "x7q2z"}, exitUsage, "shorter than 16"},
		{"a missing file", "", file + ".missing", nil, exitUsage, "EVALPOOL_AUTH_TOKEN_FILE"},
		{"a file", "", file, nil, -1, "dashboard listening"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("EVALPOOL_AUTH_TOKEN", tc.env)
			t.Setenv("EVALPOOL_AUTH_TOKEN_FILE", tc.path)
			code, base, logs := dashboardCLI(t, url, append([]string{"--listen", "127.0.0.1:0"}, tc.args...)...)
			if code != tc.code || !strings.Contains(logs.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d saying %q", code, lastLines(logs.String(), 3), tc.code, tc.stderr)
			}
			if tc.env != "" && strings.Contains(logs.String(), tc.env) {
				t.Fatalf("the refusal repeats the token: %s", lastLines(logs.String(), 3))
			}
			if code != -1 {
				return
			}
			if code, _ := httpDo(t, "GET", base+"/api/v1/runs", ""); code != 401 {
				t.Fatalf("without the file's token: %d, want 401", code)
			}
			if code, body := httpDo(t, "GET", base+"/api/v1/runs", "", "Authorization", "Bearer "+fromFile); code != 200 {
				t.Fatalf("with the file's token: %d %.100q", code, body)
			}
		})
	}
}

// evalpool secrets makes random secrets once, readable by their owner
// alone, and never prints them; a second call keeps them.
func TestSecretsCommand(t *testing.T) {
	read := func(dir string) map[string]string {
		got := map[string]string{}
		for _, s := range secretFiles {
			path := filepath.Join(dir, s.file)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s: mode %v, want 0600", path, fi.Mode().Perm())
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got[s.file] = strings.TrimSpace(string(b))
			if err := checkSecret(s.file, got[s.file]); err != nil {
				t.Fatal(err)
			}
		}
		return got
	}
	secrets := func(dir string) string {
		var stderr strings.Builder
		if code := run(t.Context(), []string{"secrets", "--dir", dir}, io.Discard, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		return stderr.String()
	}
	one, two := filepath.Join(t.TempDir(), "one"), filepath.Join(t.TempDir(), "two")
	out := secrets(one)
	first := read(one)
	for _, v := range first {
		if strings.Contains(out, v) {
			t.Fatalf("the command printed a secret: %s", out)
		}
	}
	if out := secrets(one); strings.Count(out, "kept") != len(secretFiles) {
		t.Fatalf("a second call: %s", out)
	}
	if again := read(one); again["dashboard-token"] != first["dashboard-token"] || again["executor-secret"] != first["executor-secret"] {
		t.Fatal("a second call changed the secrets")
	}
	secrets(two)
	if other := read(two); other["dashboard-token"] == first["dashboard-token"] || other["executor-secret"] == first["executor-secret"] || first["dashboard-token"] == first["executor-secret"] {
		t.Fatal("two directories, or two files, got the same secret")
	}
}

// A worker refuses an executor secret anyone could know, as the executors
// do, rather than sign with it. (Not parallel: it sets the environment.)
func TestWorkerRefusesAKnownSecret(t *testing.T) {
	url := evaltest.URL(t)
	for _, secret := range []string{"change-me", "x7q2z-fleet"} {
		t.Setenv(executor.EnvSecret, secret)
		var stderr strings.Builder
		code := run(t.Context(), []string{"--redis", url, "worker"}, io.Discard, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), "worker: the executor secret") || strings.Contains(stderr.String(), secret) {
			t.Fatalf("%q: exit %d, stderr %q; want %d refusing it without repeating it", secret, code, stderr.String(), exitUsage)
		}
	}
}
