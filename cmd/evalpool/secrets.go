package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/evalpool/evalpool/executor"
)

// minSecretBytes is the shortest dashboard token or executor secret a
// service starts with: 16 bytes is 128 bits when random.
const minSecretBytes = 16

// shippedSecrets are the tokens and secrets this repository has published,
// in its compose file and its docs: anyone can know them, so none is a
// secret.
var shippedSecrets = []string{
	"change-me",
	"change-me-dashboard-token",
}

const makeSecret = "make one with `openssl rand -hex 32` (or `python3 -c 'import secrets; print(secrets.token_hex(32))'`)"

// checkSecret refuses a token or secret that anyone could know: one this
// project ships, or one shorter than minSecretBytes. what names it in the
// message, which never repeats the value.
func checkSecret(what, value string) error {
	for _, s := range shippedSecrets {
		if strings.EqualFold(value, s) {
			return usagef("%s is a value this project publishes, so anyone can know it: %s", what, makeSecret)
		}
	}
	if len(value) < minSecretBytes {
		return usagef("%s is %d bytes, shorter than %d: %s", what, len(value), minSecretBytes, makeSecret)
	}
	return nil
}

// serviceSecret is the secret a service starts with (secretFrom), refused
// when anyone could know it (checkSecret); "" when none is set.
func serviceSecret(what, flag, env string) (string, error) {
	v, err := secretFrom(flag, env)
	if err != nil || v == "" {
		return "", err
	}
	if err := checkSecret(what, v); err != nil {
		return "", err
	}
	return v, nil
}

// secretFrom returns the secret a service starts with: flag when set, else
// the environment variable env, else the file the variable env+"_FILE"
// names (Docker's convention for secrets kept in files), trailing newlines
// trimmed. It is "" when none is set.
func secretFrom(flag, env string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	path := os.Getenv(env + "_FILE")
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", usagef("%s_FILE: reading %s: %v", env, path, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", usagef("%s_FILE: %s is empty", env, path)
	}
	return v, nil
}

// The files `evalpool secrets` makes, and the variables that name them to
// the services that read them.
var secretFiles = []struct{ file, env string }{
	{"dashboard-token", "EVALPOOL_AUTH_TOKEN"},
	{"executor-secret", executor.EnvSecret},
}

func (a *app) secretsCommand() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "secrets --dir DIR",
		Short: "Make the dashboard's token and the executors' secret as files in DIR, once",
		Long: `Make DIR/dashboard-token and DIR/executor-secret, 32 random bytes in hex
each, mode 0600, unless they are there already: a second call keeps them.
Services read them through EVALPOOL_AUTH_TOKEN_FILE and
EVALPOOL_EXECUTOR_SECRET_FILE; the compose stack runs this once, into a
volume, before its other services start. The values are never printed.`,
		Args: positional(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			for _, s := range secretFiles {
				path := filepath.Join(dir, s.file)
				made, err := makeSecretFile(path)
				if err != nil {
					return err
				}
				verb := "kept"
				if made {
					verb = "made"
				}
				fmt.Fprintf(a.stderr, "secrets: %s %s (%s_FILE)\n", verb, path, s.env)
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory to keep the secrets in (required)")
	_ = c.MarkFlagRequired("dir")
	return c
}

// makeSecretFile writes a random secret to path unless a non-empty file is
// there. made says whether it wrote one.
func makeSecretFile(path string) (made bool, err error) {
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		return false, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return false, err
	}
	// Written under another name and renamed: a reader never sees half a
	// secret, and two services racing to make it keep one.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(hex.EncodeToString(b) + "\n"); err != nil {
		_ = tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
