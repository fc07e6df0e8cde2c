package evaltest

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Info reads numeric fields of a section of Redis's INFO, all from one
// INFO call.
func Info(t testing.TB, c redis.UniversalClient, section string, fields ...string) []float64 {
	t.Helper()
	s, err := c.Info(t.Context(), section).Result()
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]string{}
	for line := range strings.Lines(s) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			all[k] = v
		}
	}
	out := make([]float64, len(fields))
	for i, f := range fields {
		v, ok := all[f]
		if !ok {
			t.Fatalf("INFO %s has no %s", section, f)
		}
		if out[i], err = strconv.ParseFloat(v, 64); err != nil {
			t.Fatalf("INFO %s: %s is %q, not a number", section, f, v)
		}
	}
	return out
}

// RedisCPU is the CPU Redis has used so far, user and system, in seconds:
// benchmarks read it before and after to weigh Redis's side of the work.
func RedisCPU(t testing.TB, c redis.UniversalClient) float64 {
	t.Helper()
	v := Info(t, c, "cpu", "used_cpu_sys", "used_cpu_user")
	return v[0] + v[1]
}

// CommandStat sums one field of INFO commandstats (calls, usec) over the
// commands counted says to.
func CommandStat(t testing.TB, c redis.UniversalClient, field string, counted func(name string) bool) float64 {
	t.Helper()
	s, err := c.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for line := range strings.Lines(s) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, stat := strings.CutPrefix(name, "cmdstat_")
		if !ok || !stat || !counted(name) {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, found := strings.CutPrefix(kv, field+"="); found {
				n, _ := strconv.ParseFloat(v, 64)
				total += n
			}
		}
	}
	return total
}

// CommandRate is how many commands a second Redis runs over window, from
// INFO commandstats (INFO itself left out): what a process costs Redis
// while the test holds it in one state.
func CommandRate(t testing.TB, c redis.UniversalClient, window time.Duration) float64 {
	t.Helper()
	calls := func() float64 {
		return CommandStat(t, c, "calls", func(name string) bool { return name != "info" })
	}
	before, from := calls(), time.Now()
	select {
	case <-time.After(window):
	case <-t.Context().Done():
		t.Fatal("the test ended within the window")
	}
	return (calls() - before) / time.Since(from).Seconds()
}
