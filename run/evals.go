package run

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
)

// Bounds of EvalsQuery.
const (
	// DefaultEvalsLimit and MaxEvalsLimit are EvalsQuery.Limit's default
	// and bound.
	DefaultEvalsLimit = 50
	MaxEvalsLimit     = 500
	// EvalsScan bounds the entries of the run's log of ends, and so the
	// records, one Evals call reads: a filter that rarely matches costs
	// each page this many records, never the run's whole.
	EvalsScan = 1000
)

// EvalsQuery selects a page of a run's ended evals (Store.Evals). The zero
// value is the first DefaultEvalsLimit evals that ended, every status.
type EvalsQuery struct {
	// Status keeps the evals that ended so: Passed, Failed, Errored or
	// Cancelled. Empty: every status.
	Status string
	// Group keeps the evals of that group (Record.Group), exactly. Empty:
	// every group, and evals of none.
	Group string
	// Executor keeps the evals whose last attempt ran on that executor,
	// by its URL, exactly. Empty: every executor.
	Executor string
	// Text keeps the evals whose eval ID or reason (Record.Reason) holds
	// it, whatever the case. Empty: every eval.
	Text string
	// Cursor is where the page starts in the run's log of ends: 0 at its
	// start, else a page's Next.
	Cursor int64
	// Limit bounds the page's evals: 1 to MaxEvalsLimit; 0 is
	// DefaultEvalsLimit.
	Limit int
}

func (q *EvalsQuery) validate() error {
	switch q.Status {
	case "", Passed, Failed, Errored, Cancelled:
	default:
		return fmt.Errorf("%w: status %q: want %s, %s, %s or %s", ErrInvalid, q.Status, Passed, Failed, Errored, Cancelled)
	}
	switch {
	case q.Cursor < 0:
		return fmt.Errorf("%w: cursor %d: want 0 or a page's next", ErrInvalid, q.Cursor)
	case q.Limit < 0 || q.Limit > MaxEvalsLimit:
		return fmt.Errorf("%w: limit %d: want 1 to %d", ErrInvalid, q.Limit, MaxEvalsLimit)
	}
	return nil
}

// match reports whether the record rec of the run name is one q keeps.
func (q *EvalsQuery) match(name string, rec Record) bool {
	switch {
	case q.Status != "" && rec.Status != q.Status,
		q.Group != "" && rec.Group != q.Group,
		q.Executor != "" && rec.Executor != q.Executor:
		return false
	case q.Text == "":
		return true
	}
	text := strings.ToLower(q.Text)
	return strings.Contains(strings.ToLower(EvalID(name, rec.Key)), text) || strings.Contains(strings.ToLower(rec.Reason()), text)
}

// EvalsPage is a page of a run's ended evals.
type EvalsPage struct {
	// Records are the evals the query kept, in the order they ended.
	Records []Record
	// Next is the cursor of the page after: where this page's read
	// stopped, whether or not it filled the page. 0 when it read to the
	// end of the log, as it was then.
	Next int64
	// Counts are the run's, read in the same step as the entries of the
	// log the page walked: an eval the page lists ended in them. (Only an
	// eval reopened, then ended again, between that step and the read of
	// its record is left out, to be listed at its new end.)
	Counts Counts
}

// Evals reads a page of the run's ended evals that q keeps, in the order
// they ended, walking its log of ends from q.Cursor, and the run's counts.
// It reads at most EvalsScan log entries, and their records q.Limit,
// then twice as many, and so on, until the page is full or the entries
// are read: O(Limit) records when most evals match, at most EvalsScan
// when few do, whatever the run's size. A page that reaches EvalsScan
// entries stops there, short of Limit or even empty, with the Next to
// read on from. As with EndedSince, an entry of an eval reopened or ended
// again later is skipped, so that every eval is listed once, at its last
// end; ends recorded before the log existed are not listed. A bad query is
// ErrInvalid; an unknown run, ErrNotFound.
func (s *Store) Evals(ctx context.Context, name string, q EvalsQuery) (EvalsPage, error) {
	if err := ValidateName(name); err != nil {
		return EvalsPage{}, err
	}
	if err := q.validate(); err != nil {
		return EvalsPage{}, fmt.Errorf("run %s: %w", name, err)
	}
	if q.Limit == 0 {
		q.Limit = DefaultEvalsLimit
	}
	k := keys.ForRun(name)
	found, size := redis.NewStringCmd(ctx, "hget", k.Meta(), "name"), redis.NewStringCmd(ctx, "hget", k.Meta(), "size")
	counts, running := redis.NewMapStringStringCmd(ctx, "hgetall", k.Counts()), redis.NewIntCmd(ctx, "hlen", k.Running())
	logged, entries := redis.NewIntCmd(ctx, "llen", k.Ended()), redis.NewStringSliceCmd(ctx, "lrange", k.Ended(), q.Cursor, q.Cursor+EvalsScan-1)
	if err := s.read(ctx, name, found, size, counts, running, logged, entries); err != nil {
		return EvalsPage{}, err
	}
	if found.Val() != name {
		return EvalsPage{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	c, err := countsOf(name, size.Val(), counts.Val(), running.Val())
	if err != nil {
		return EvalsPage{}, err
	}
	page := EvalsPage{Records: []Record{}, Counts: c}
	ended := entries.Val()
	read := len(ended) // entries walked, up to the last one the page holds
	for from, n := 0, q.Limit; from < len(ended) && len(page.Records) < q.Limit; from, n = from+n, 2*n {
		recs, _, err := s.ends(ctx, name, ended[from:min(from+n, len(ended))], q.Cursor+int64(from))
		if err != nil {
			return EvalsPage{}, err
		}
		for i, rec := range recs {
			if rec == nil || !q.match(name, *rec) {
				continue
			}
			page.Records = append(page.Records, *rec)
			if len(page.Records) == q.Limit {
				read = from + i + 1
				break
			}
		}
	}
	if next := q.Cursor + int64(read); next < logged.Val() {
		page.Next = next
	}
	return page, nil
}
