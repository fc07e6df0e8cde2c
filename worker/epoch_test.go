package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// An idle worker's maintenance tick migrates each pool it serves and reads
// its epoch in one call: the worker reads the epoch on its own once, as it
// starts, and no tick does.
func TestTickReadsTheEpochWithTheMigration(t *testing.T) {
	t.Parallel()
	client := redis.NewClient(&redis.Options{Addr: evaltest.StartT(t, evaltest.Options{}).Addr})
	t.Cleanup(func() { _ = client.Close() })
	reads := &epochReads{key: keys.ForPool(tasks.DefaultPool).Epoch()}
	client.AddHook(reads)
	migrations := evaltest.CountScript(client, lua.Migrate)
	w, _ := setupOn(t, client, Config{ReapInterval: time.Second}, refexec.Options{})
	start(t, w)
	evaltest.Eventually(t, 10*time.Second, "the worker never ticked three times", func() bool { return migrations.N() >= 4 })
	if n := reads.n.Load(); n != 1 {
		t.Fatalf("%d migrations, and the epoch read in %d calls of its own; want one, at the start", migrations.N(), n)
	}
}

// epochReads counts the GETs of one pool's epoch key.
type epochReads struct {
	key string
	n   atomic.Int64
}

func (h *epochReads) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *epochReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); cmd.Name() == "get" && len(args) == 2 && args[1] == h.key {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *epochReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
