package evaltest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// NewRunCalls returns a RunCalls in front of next.
func NewRunCalls(next http.Handler) *RunCalls {
	return &RunCalls{next: next, now: map[string]int{}, peak: map[string]int{}, spans: map[string][][2]time.Time{}}
}

// RunCalls stands in front of executors and tells what they saw of each
// run: its calls in flight now and at most, and its calls' spans, so that
// a run's share of the pool is measured where it is spent. The evals of no
// run count as the run "".
type RunCalls struct {
	next http.Handler
	mu   sync.Mutex
	now  map[string]int
	peak map[string]int
	// spans are each call's [start, end), by run.
	spans map[string][][2]time.Time
}

func (c *RunCalls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/v1/evals") {
		c.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req struct {
		EvalID string `json:"eval_id"`
	}
	_ = json.Unmarshal(body, &req)
	name, _, ofRun := strings.Cut(req.EvalID, "/")
	if !ofRun {
		name = ""
	}
	start := time.Now()
	c.mu.Lock()
	c.now[name]++
	c.peak[name] = max(c.peak[name], c.now[name])
	c.mu.Unlock()
	c.next.ServeHTTP(w, r)
	c.mu.Lock()
	c.now[name]--
	c.spans[name] = append(c.spans[name], [2]time.Time{start, time.Now()})
	c.mu.Unlock()
}

// Busy is how long the executors spent on run name's calls within
// [from, to).
func (c *RunCalls) Busy(name string, from, to time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var d time.Duration
	for _, s := range c.spans[name] {
		a, b := s[0], s[1]
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	return d
}

// Peak is the most calls of run name the executors had at once.
func (c *RunCalls) Peak(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak[name]
}
