package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/evalpool/evalpool/run"
)

// Errors of a follow the caps refused.
var (
	// ErrTooManyFollowersOfRun is a follow of a run that has
	// Options.MaxFollowersPerRun followers already: 429.
	ErrTooManyFollowersOfRun = errors.New("too many followers of this run")
	// ErrTooManyFollowers is a follow past Options.MaxFollowers in all: 503.
	ErrTooManyFollowers = errors.New("too many followers")
)

// followBuffer is how many batches of ends a follower may have unread
// before it is left to catch up on its own, from the run's log.
const followBuffer = 16

// follows shares the following of runs between the requests of one
// Handler: one hub per followed run, whose poller reads the ends logged
// since its cursor (run.Store.EndedSince), O(what ended), and hands them to
// every follower of the run. A follower first replays the run's log on its
// own, a page at a time, then joins the hub where it is.
type follows struct {
	runs     *run.Store
	interval time.Duration
	page     int
	perRun   int
	total    int

	mu   sync.Mutex
	hubs map[string]*hub
	n    int // followers in all
}

// hub is one followed run. Its fields are guarded by follows.mu.
type hub struct {
	name    string
	members int // followers holding a place, replaying or subscribed
	subs    map[*subscription]struct{}
	started bool
	cursor  int64 // the log position the poller reads from next
	stop    context.CancelFunc
	// ended is set when the poller stopped for good: the run's every eval
	// ended (err nil), or it could no longer be read.
	ended bool
	err   error
}

// batch is the lines of the ends at log positions [from, to), each a
// ResultLine in JSON with its newline: encoded once, written by every
// follower. Lines may be fewer than positions: the ends of evals reopened
// are skipped (run.Store.EndedSince). Read-only.
type batch struct {
	from, to int64
	lines    [][]byte
}

// endedLines reads the ends logged at [cursor, cursor+max) of run name
// (run.Store.EndedSince) as the lines of a batch, and the cursor after
// them.
func endedLines(ctx context.Context, runs *run.Store, name string, cursor int64, max int) ([][]byte, int64, error) {
	recs, next, err := runs.EndedSince(ctx, name, cursor, max)
	if err != nil {
		return nil, cursor, err
	}
	lines := make([][]byte, len(recs))
	for i, rec := range recs {
		b, err := json.Marshal(ResultLine{EvalID: run.EvalID(name, rec.Key), Record: rec})
		if err != nil {
			return nil, cursor, fmt.Errorf("run %s: eval %s: %w", name, rec.Key, err)
		}
		lines[i] = append(b, '\n')
	}
	return lines, next, nil
}

// subscription is a follower subscribed to its hub. The poller closes ch
// when the hub ended, or when the follower fell followBuffer batches
// behind (lagged): it then catches up from the log and subscribes again.
type subscription struct {
	ch     chan batch
	lagged bool
}

// join gives a follower a place on the run's hub, or refuses it past the
// caps. Every join is paired with a leave.
func (f *follows) join(name string) (*hub, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.hubs[name]
	switch {
	case h != nil && h.members >= f.perRun:
		return nil, fmt.Errorf("%w: run %s has %d, the most it may (Options.MaxFollowersPerRun); try again later", ErrTooManyFollowersOfRun, name, h.members)
	case f.n >= f.total:
		return nil, fmt.Errorf("%w: %d runs' followers in all, the most the API serves (Options.MaxFollowers); try again later", ErrTooManyFollowers, f.n)
	}
	if h == nil {
		h = &hub{name: name, subs: map[*subscription]struct{}{}}
		f.hubs[name] = h
	}
	h.members++
	f.n++
	return h, nil
}

// leave gives the follower's place back; the last follower of a hub stops
// its poller.
func (f *follows) leave(h *hub, s *subscription) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s != nil {
		delete(h.subs, s)
	}
	h.members--
	f.n--
	if h.members == 0 {
		if h.stop != nil {
			h.stop()
		}
		if f.hubs[h.name] == h {
			delete(f.hubs, h.name)
		}
	}
}

// subscribe subscribes a follower that has replayed the log up to cursor.
// It returns nil with done false when the hub is ahead (the follower reads
// more of the log first), and nil with done true when the hub ended at or
// before cursor, with the hub's error. The first subscriber starts the
// poller at its cursor.
func (f *follows) subscribe(h *hub, cursor int64) (s *subscription, done bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case h.started && cursor < h.cursor:
		return nil, false, nil
	case h.ended:
		return nil, true, h.err
	}
	s = &subscription{ch: make(chan batch, followBuffer)}
	h.subs[s] = struct{}{}
	if !h.started {
		h.started, h.cursor = true, cursor
		ctx, stop := context.WithCancel(context.Background())
		h.stop = stop
		go f.poll(ctx, h)
	}
	return s, false, nil
}

// poll reads the run's new ends every interval, and only when its O(1)
// progress says some ended, until the run's every eval ended, it can no
// longer be read, or its followers left.
func (f *follows) poll(ctx context.Context, h *hub) {
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	f.mu.Lock()
	cursor := h.cursor
	f.mu.Unlock()
	seen := -1
	for {
		c, err := f.runs.Progress(ctx, h.name)
		if err == nil && c.Done() != seen {
			cursor, err = f.read(ctx, h, cursor)
			seen = c.Done()
		}
		if ctx.Err() != nil {
			return // its followers left
		}
		if err != nil || c.Done() >= c.Size {
			f.end(h, err) // each follower says err, and logs it
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// read hands every end logged from cursor on to the hub's subscribers, a
// page at a time, and returns the cursor after them.
func (f *follows) read(ctx context.Context, h *hub, cursor int64) (int64, error) {
	for {
		lines, next, err := endedLines(ctx, f.runs, h.name, cursor, f.page)
		if err != nil || next == cursor {
			return cursor, err
		}
		f.publish(h, batch{from: cursor, to: next, lines: lines}, next)
		full := next-cursor == int64(f.page)
		cursor = next
		if !full {
			return cursor, nil
		}
	}
}

// publish sends b to every subscriber without waiting: one whose buffer is
// full is unsubscribed, and catches up from the log by itself.
func (f *follows) publish(h *hub, b batch, next int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h.cursor = next
	for s := range h.subs {
		select {
		case s.ch <- b:
		default:
			s.lagged = true
			delete(h.subs, s)
			close(s.ch)
		}
	}
}

// end ends the hub: its subscribers' channels are closed, and the next
// follower of the run starts a hub of its own.
func (f *follows) end(h *hub, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h.ended, h.err = true, err
	for s := range h.subs {
		delete(h.subs, s)
		close(s.ch)
	}
	if f.hubs[h.name] == h {
		delete(f.hubs, h.name)
	}
}

// closed says why the poller closed s: the follower fell behind (lagged),
// or the hub ended (with its error, nil when every eval of the run ended).
func (f *follows) closed(h *hub, s *subscription) (lagged bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return s.lagged, h.err
}
