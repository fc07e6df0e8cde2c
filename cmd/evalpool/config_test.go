package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
)

// TestPoolConfig: pool config shows the pool's settings, changes those
// whose flags are given and keeps the others; a bad value is one line that
// changes nothing; a worker given a pool setting's flag refuses to start,
// saying where the setting lives now.
func TestPoolConfig(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	cli := func(args ...string) result { return runCLI(t, url, name, args...) }
	settings := func() pool.Settings {
		t.Helper()
		r := cli("pool", "config", "--json")
		var s pool.Settings
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &s) != nil {
			t.Fatalf("pool config --json: %+v", r)
		}
		return s
	}
	defaults := pool.Settings{LeaseGrace: pool.DefaultLeaseGrace, QuarantineAfter: pool.DefaultQuarantine, ProbeInterval: pool.DefaultProbe, ProbeMaxInterval: pool.DefaultProbeMax}
	if s := settings(); s != defaults {
		t.Fatalf("a new pool's settings = %+v, want the defaults %+v", s, defaults)
	}
	tests := []struct {
		args []string
		code int
		want pool.Settings // after the command
	}{
		{[]string{"--quarantine-after", "0"}, 0, pool.Settings{LeaseGrace: 2 * time.Second, QuarantineAfter: -1, ProbeInterval: 10 * time.Second, ProbeMaxInterval: time.Minute}},
		{[]string{"--lease-grace", "500ms", "--probe-interval", "2m"}, 0, pool.Settings{LeaseGrace: 500 * time.Millisecond, QuarantineAfter: -1, ProbeInterval: 2 * time.Minute, ProbeMaxInterval: 2 * time.Minute}},
		{[]string{"--probe-max-interval", "1m"}, 2, pool.Settings{LeaseGrace: 500 * time.Millisecond, QuarantineAfter: -1, ProbeInterval: 2 * time.Minute, ProbeMaxInterval: 2 * time.Minute}},
		{[]string{"--lease-grace", "11m"}, 2, pool.Settings{LeaseGrace: 500 * time.Millisecond, QuarantineAfter: -1, ProbeInterval: 2 * time.Minute, ProbeMaxInterval: 2 * time.Minute}},
		{[]string{"--quarantine-on-fail-rate", "2"}, 2, pool.Settings{LeaseGrace: 500 * time.Millisecond, QuarantineAfter: -1, ProbeInterval: 2 * time.Minute, ProbeMaxInterval: 2 * time.Minute}},
		{[]string{"--lease-grace", "-1s"}, 2, pool.Settings{LeaseGrace: 500 * time.Millisecond, QuarantineAfter: -1, ProbeInterval: 2 * time.Minute, ProbeMaxInterval: 2 * time.Minute}},
		{[]string{"--quarantine-after", "5", "--quarantine-on-fail-rate", "0.9"}, 0, pool.Settings{LeaseGrace: 500 * time.Millisecond, QuarantineAfter: 5, QuarantineFailRate: 0.9, ProbeInterval: 2 * time.Minute, ProbeMaxInterval: 2 * time.Minute}},
	}
	for _, tt := range tests {
		r := cli(append([]string{"pool", "config"}, tt.args...)...)
		if r.code != tt.code {
			t.Fatalf("pool config %v: %+v; want exit %d", tt.args, r, tt.code)
		}
		if r.code != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("pool config %v: stderr %q, want one line", tt.args, r.stderr)
		}
		if s := settings(); s != tt.want {
			t.Fatalf("after pool config %v: %+v, want %+v", tt.args, s, tt.want)
		}
	}
	if r := cli("pool", "config"); r.code != 0 || !strings.Contains(r.stdout, "quarantine-after         5") {
		t.Fatalf("pool config: %+v", r)
	}
	r := cli("worker", "--quarantine-after", "1")
	if r.code != 2 || !strings.Contains(r.stderr, "evalpool pool config --quarantine-after 1") {
		t.Fatalf("a worker given --quarantine-after: %+v; want refused, pointing at pool config", r)
	}
}
