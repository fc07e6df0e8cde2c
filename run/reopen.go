package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

// Reopen takes back the ends of the evals evalKeys of run r (as Get read
// it) whose record's status is one of statuses, so that they run again and
// their next end (Finish) counts: their records leave the run, its counts
// go down by them, and the run reads as not ended until they end again. An
// eval not ended, or ended otherwise, is left alone; so a second call with
// the same keys reopens nothing. It returns the keys reopened, in
// evalKeys' order: a script per 1,000 evals.
//
// The run goes back into its pool's index of open runs, with the
// reconciliation's cursor at the first eval reopened, so that an end its
// worker could not record is still found (Reconcile): the caller deletes
// the evals' ended tasks first, or the reconciliation would record their
// old ends again. Each eval's entry in the log of ends stays; EndedSince
// skips it.
func (s *Store) Reopen(ctx context.Context, r Run, evalKeys []string, statuses ...string) (reopened []string, err error) {
	if len(statuses) == 0 {
		return nil, fmt.Errorf("%w: run %s: reopen needs the statuses to reopen", ErrInvalid, r.Name)
	}
	for _, st := range statuses {
		switch st {
		case Passed, Failed, Errored, Cancelled:
		default:
			return nil, fmt.Errorf("%w: run %s: reopen status %q: want an end (passed, failed, errored, cancelled)", ErrInvalid, r.Name, st)
		}
	}
	at := make(map[string]int, len(r.Keys))
	for i, key := range r.Keys {
		at[key] = i
	}
	for _, key := range evalKeys {
		if _, ok := at[key]; !ok {
			return nil, fmt.Errorf("%w: run %s has no eval %q", ErrInvalid, r.Name, key)
		}
	}
	defer func() {
		if len(reopened) == 0 {
			return
		}
		// Outside the script: the index is no run's key (another slot).
		zerr := s.client.ZAdd(context.WithoutCancel(ctx), keys.OpenRuns(r.Pool), redis.Z{Score: float64(time.Now().UnixMilli()), Member: r.Name}).Err()
		if zerr != nil {
			err = errors.Join(err, fmt.Errorf("run %s: reopened, but not back in its pool's open runs (an end its worker misses is not reconciled): %w", r.Name, lua.Full(zerr)))
		}
	}()
	wanted := strings.Join(statuses, ",")
	for start := 0; start < len(evalKeys); start += finishBatch {
		chunk := evalKeys[start:min(start+finishBatch, len(evalKeys))]
		args := make([]any, 0, 2+2*len(chunk))
		args = append(args, s.retention.Milliseconds(), wanted)
		for _, key := range chunk {
			args = append(args, key, at[key])
		}
		got, err := lua.RunReopen.Run(ctx, s.client, keys.ForRun(r.Name).Script(), args...).StringSlice()
		reopened = append(reopened, got...)
		if err != nil {
			return reopened, fmt.Errorf("run %s: reopen %d evals: %w", r.Name, len(chunk), lua.Full(err))
		}
	}
	return reopened, nil
}

// ErrRetrying means another retry of the run is under way.
var ErrRetrying = errors.New("run being retried")

// RetryLockTTL is how long a retry holds its run's lock at most: a
// retrier that died frees it then.
const RetryLockTTL = 10 * time.Minute

// unlockScript deletes a lock (a run's retry lock, a pool's admission
// lock) if it still holds the token.
//
// KEYS[1] the lock; ARGV[1] the token. Returns 1 when deleted, else 0.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0`)

// LockRetry takes run name's retry lock, so that two retries of one run
// never delete the tasks each other enqueued: a second is ErrRetrying
// until the first calls unlock (or RetryLockTTL passed).
func (s *Store) LockRetry(ctx context.Context, name string) (unlock func(), err error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	unlock, err = s.lock(ctx, keys.ForRun(name).Retrying(), RetryLockTTL)
	if err != nil {
		return nil, fmt.Errorf("run %s: retry lock: %w", name, lua.Full(err))
	}
	if unlock == nil {
		return nil, fmt.Errorf("%w: run %s: another retry of it is under way; try again once it is done", ErrRetrying, name)
	}
	return unlock, nil
}

// lock takes the lock key for ttl, unless another holds it: then unlock is
// nil.
func (s *Store) lock(ctx context.Context, key string, ttl time.Duration) (unlock func(), err error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	ok, err := s.client.SetNX(ctx, key, token, ttl).Result()
	if err != nil || !ok {
		return nil, err
	}
	return func() {
		// Best effort: a lock left behind expires.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = unlockScript.Run(ctx, s.client, []string{key}, token).Err()
	}, nil
}
