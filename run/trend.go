package run

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
)

// MaxSuiteRuns bounds a suite's index: its newest runs, as many.
const MaxSuiteRuns = 100

// TrendPoint is a run in its suite's trend: its pass rate, -1 before any
// eval was graded or errored.
type TrendPoint struct {
	Name     string  `json:"name"`
	PassRate float64 `json:"pass_rate"`
}

// indexSuite adds r to its suite's index, which keeps the newest
// MaxSuiteRuns.
func (s *Store) indexSuite(ctx context.Context, r Run) error {
	k := keys.Suite(r.Suite())
	_, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.ZAdd(ctx, k, redis.Z{Score: float64(r.CreatedAt.UnixMilli()), Member: r.Name})
		pipe.ZRemRangeByRank(ctx, k, 0, -MaxSuiteRuns-1)
		return nil
	})
	return err
}

// Trends gives each run of runs (newest first, as List has them) the pass
// rates of its suite's last n runs, oldest first, ending with its own,
// whether List gave them or not: the runs of a suite newer than the oldest
// it gave are all in runs, so that a read of its index for n more (2n, for
// runs gone it may still hold), and of the counts of those, is enough. Two
// round trips (a third to drop runs gone), O(runs × n) reads at most. A run gone since, or made again
// under its name, is left out, and out of its suite's index: more than n
// of them in one read shorten a trend until the next.
func (s *Store) Trends(ctx context.Context, runs []Run, n int) (map[string][]TrendPoint, error) {
	type point struct {
		TrendPoint
		suite   string
		created int64
		listed  bool
		counts  *redis.SliceCmd
		meta    *redis.SliceCmd
	}
	// A run by its suite and name: an index may still hold a run made
	// again under its name in another suite.
	type at struct{ suite, name string }
	points := map[at]*point{}
	perSuite := map[string]int{}
	for _, r := range runs {
		points[at{r.Suite(), r.Name}] = &point{TrendPoint: TrendPoint{Name: r.Name}, suite: r.Suite(), created: r.CreatedAt.UnixMilli(), listed: true}
		perSuite[r.Suite()]++
	}
	// n more than listed, and n more again for the runs gone it may hold.
	index := map[string]*redis.ZSliceCmd{}
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for suite, listed := range perSuite {
			index[suite] = pipe.ZRevRangeWithScores(ctx, keys.Suite(suite), 0, int64(listed+2*n-1))
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("runs: suites: %w", err)
	}
	for suite, cmd := range index {
		for _, z := range cmd.Val() {
			if name, _ := z.Member.(string); points[at{suite, name}] == nil {
				points[at{suite, name}] = &point{TrendPoint: TrendPoint{Name: name}, suite: suite, created: int64(z.Score)}
			}
		}
	}
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, p := range points {
			k := keys.ForRun(p.Name)
			p.counts, p.meta = pipe.HMGet(ctx, k.Counts(), Passed, Failed, Errored), pipe.HMGet(ctx, k.Meta(), "name", "created_at")
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("runs: pass rates: %w", err)
	}
	suites := map[string][]*point{}
	var gone []*point
	for _, p := range points {
		// Gone, or another run of its name since (of another suite: the
		// same suite's index has it anew).
		if created, _ := p.meta.Val()[1].(string); !p.listed && (p.meta.Val()[0] != p.Name || created != strconv.FormatInt(p.created, 10)) {
			gone = append(gone, p)
			continue
		}
		var o Outcomes
		for i, field := range []*int{&o.Passed, &o.Failed, &o.Errored} {
			v, _ := p.counts.Val()[i].(string)
			*field, _ = strconv.Atoi(v)
		}
		p.PassRate = o.passRate()
		suites[p.suite] = append(suites[p.suite], p)
	}
	if len(gone) > 0 {
		_, _ = s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, p := range gone {
				pipe.ZRem(ctx, keys.Suite(p.suite), p.Name)
			}
			return nil
		})
	}
	trends := make(map[string][]TrendPoint, len(runs))
	for _, pts := range suites {
		slices.SortFunc(pts, func(a, b *point) int { return cmp.Or(cmp.Compare(a.created, b.created), cmp.Compare(a.Name, b.Name)) })
		for i, p := range pts {
			if !p.listed {
				continue
			}
			trend := make([]TrendPoint, 0, n)
			for _, q := range pts[max(0, i+1-n) : i+1] {
				trend = append(trend, q.TrendPoint)
			}
			trends[p.Name] = trend
		}
	}
	return trends, nil
}
