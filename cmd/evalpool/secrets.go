package main

import (
	"errors"
	"os"
	"strings"
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
