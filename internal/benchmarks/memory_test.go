//go:build bench

package benchmarks

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
)

const memExecutors = 100_000

// memory measures Redis's used_memory per registered executor and per
// lease, at 100,000 of each.
func memory(t *testing.T, client *redis.Client, md *strings.Builder) {
	var perExec, perLease []float64
	for range runs() {
		if err := client.FlushAll(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		p, err := pool.New(client, pool.Options{Name: "mem"})
		if err != nil {
			t.Fatal(err)
		}
		m0 := evaltest.Info(t, client, "memory", "used_memory")[0]
		execs := make([]pool.Executor, memExecutors)
		for i := range execs {
			execs[i].URL = fmt.Sprintf("http://10.%d.%d.%d:8080", i/65536, i/256%256, i%256)
		}
		if _, err := p.Register(t.Context(), execs...); err != nil {
			t.Fatal(err)
		}
		m1 := evaltest.Info(t, client, "memory", "used_memory")[0]
		var next atomic.Int64
		n, _, err := parallel(8, memExecutors, time.Minute, func() error {
			_, err := p.Acquire(t.Context(), fmt.Sprint("eval-", next.Add(1)), time.Hour, pool.AcquireArgs{})
			return err
		})
		if err != nil || n != memExecutors {
			t.Fatalf("acquired %d of %d: %v", n, memExecutors, err)
		}
		m2 := evaltest.Info(t, client, "memory", "used_memory")[0]
		perExec = append(perExec, (m1-m0)/memExecutors)
		perLease = append(perLease, (m2-m1)/memExecutors)
	}
	fmt.Fprintf(md, "## 3. Redis memory (the commands and round trips per eval are in the table above)\n\n`used_memory` deltas with %s executors (URLs like `http://10.1.134.160:8080`, no labels):\n\n", thousands(memExecutors))
	md.WriteString("| what | bytes each |\n| --- | ---: |\n")
	fmt.Fprintf(md, "| an idle registered executor (its record, its place in `available`) | %.0f |\n", median(perExec))
	fmt.Fprintf(md, "| an in-flight lease (lease record, deadline, holder index; less its place in `available`) | %.0f |\n", median(perLease))
	fmt.Fprintf(md, "\n- idle executor: %.0f bytes (target ≤ 250): %s\n\n", median(perExec), verdict(median(perExec) <= 250))
}
