package pool_test

import (
	"context"
	"fmt"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
)

// Cleanup wired twice releases twice; the second release changes nothing,
// and is known for the lease's other path, not a double release to alert on.
func Example() {
	ctx := context.Background()
	client := evaltest.ExampleClient()
	p, err := pool.New(client, pool.Options{Name: "example"})
	if err != nil {
		panic(err)
	}
	defer client.Del(ctx, p.Keys()...)

	if _, err := p.Register(ctx, pool.Executor{URL: "http://executor-1:8080"}); err != nil {
		panic(err)
	}
	lease, err := p.Acquire(ctx, "eval-42", 30*time.Second, pool.AcquireArgs{})
	if err != nil {
		panic(err)
	}
	fmt.Println("leased", lease.URL, "to", lease.EvalID)

	for _, path := range []string{"success", "failure"} {
		r, err := p.Release(ctx, lease, pool.ReleaseArgs{Path: path, ByCleanup: true})
		if err != nil {
			panic(err)
		}
		fmt.Println(path, "cleanup:", r.Outcome, "duplicate:", r.Duplicate, "double:", r.Double)
	}
	vs, _ := p.Check(ctx)
	fmt.Println("violations:", len(vs))
	// Output:
	// leased http://executor-1:8080 to eval-42
	// success cleanup: released duplicate: false double: false
	// failure cleanup: already_in_pool duplicate: true double: false
	// violations: 0
}

// A late release by an eval whose executor went to another eval is refused.
func ExamplePool_Release_stale() {
	ctx := context.Background()
	client := evaltest.ExampleClient()
	p, _ := pool.New(client, pool.Options{Name: "example-stale"})
	defer client.Del(ctx, p.Keys()...)
	_, _ = p.Register(ctx, pool.Executor{URL: "http://executor-1:8080"})

	a, _ := p.Acquire(ctx, "eval-a", 30*time.Second, pool.AcquireArgs{})
	_, _ = p.Release(ctx, a, pool.ReleaseArgs{Path: "success"})
	b, _ := p.Acquire(ctx, "eval-b", 30*time.Second, pool.AcquireArgs{})

	r, _ := p.Release(ctx, a, pool.ReleaseArgs{Path: "failure"}) // A's late duplicate
	fmt.Println(r.Outcome, "held by", r.Holder)
	_, err := p.Acquire(ctx, "eval-c", 30*time.Second, pool.AcquireArgs{})
	fmt.Println(err)
	r, _ = p.Release(ctx, b, pool.ReleaseArgs{Path: "success"})
	fmt.Println(r.Outcome)
	// Output:
	// stale_lease held by eval-b
	// pool: no executor available
	// released
}
