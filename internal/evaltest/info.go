package evaltest

import (
	"strconv"
	"strings"
	"testing"

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
