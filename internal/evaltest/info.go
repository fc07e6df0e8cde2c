package evaltest

import (
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Info reads one numeric field of a section of Redis's INFO.
func Info(t testing.TB, c redis.UniversalClient, section, field string) float64 {
	t.Helper()
	s, err := c.Info(t.Context(), section).Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(s) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("INFO %s: %s is %q, not a number", section, field, v)
			}
			return f
		}
	}
	t.Fatalf("INFO %s has no %s", section, field)
	return 0
}

// RedisCPU is the CPU Redis has used so far, user and system, in seconds:
// benchmarks read it before and after to weigh Redis's side of the work.
func RedisCPU(t testing.TB, c redis.UniversalClient) float64 {
	t.Helper()
	return Info(t, c, "cpu", "used_cpu_sys") + Info(t, c, "cpu", "used_cpu_user")
}
