package executor

import (
	"net/http"
	"strconv"
	"time"
)

// TimeHeader carries, on every answer of an executor that tells its time,
// its wall clock in unix milliseconds when it wrote the answer. A client
// reads it to send times (sent_at_ms, the deadline) in the executor's clock.
const TimeHeader = "X-Evalpool-Time"

// maxDrift bounds how fast an executor's clock may run against the
// client's monotonic clock between two answers: 1,000 ppm, twice what NTP
// slews by. A time learned long ago is widened by it, so that an estimate
// stays on its safe side while no answer refreshes it.
const maxDrift = 1000

// ClockOffset is what a client knows of an executor's wall clock against
// its own, from the executor's last stamped answer: the executor's clock
// minus the client's lies in [Min, Max] (positive: the executor is ahead).
// Max - Min is the round trip of that answer.
type ClockOffset struct {
	Min, Max time.Duration
}

// Mid is the middle of the range: the best guess of the offset.
func (o ClockOffset) Mid() time.Duration { return o.Min + (o.Max-o.Min)/2 }

// stamp is an executor's time as last learned: the stamp of an answer, and
// the client's clock (wall and monotonic) when the request went out and
// when the answer came. The stamp was written between the two.
type stamp struct {
	ms        int64
	sent, got time.Time
}

// now returns the client's wall clock.
func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// learn keeps the executor's stamp of an answer, if it sent one.
func (c *Client) learn(baseURL string, h http.Header, sent, got time.Time) {
	ms, err := strconv.ParseInt(h.Get(TimeHeader), 10, 64)
	if err != nil || ms <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stamps == nil {
		c.stamps = map[string]stamp{}
	}
	c.stamps[baseURL] = stamp{ms: ms, sent: sent, got: got}
}

// execTime bounds the executor's wall clock at now, a reading of c.now(),
// in unix ms: lo is never later than it and hi never earlier, so lo dates
// a lease's start (a lease that starts early ends early) and hi a deadline
// (a deadline that comes late at the executor never stops an eval before
// the caller gives up). The bounds come from the executor's last stamp,
// carried forward on the monotonic clock and widened by maxDrift, which
// makes the caller's own wall clock irrelevant; with no stamp both are the
// caller's wall clock, as before executors told their time.
func (c *Client) execTime(baseURL string, now time.Time) (lo, hi int64) {
	c.mu.Lock()
	s, ok := c.stamps[baseURL]
	c.mu.Unlock()
	if !ok {
		return now.UnixMilli(), now.UnixMilli()
	}
	sinceGot, sinceSent := now.Sub(s.got), now.Sub(s.sent)
	drift := max(sinceGot, 0) / maxDrift
	return s.ms + (sinceGot - drift).Milliseconds(), s.ms + 1 + (sinceSent + drift + time.Millisecond - 1).Milliseconds()
}

// Offset is what the client knows of the executor's clock against its own,
// and false when the executor never stamped an answer.
func (c *Client) Offset(baseURL string) (ClockOffset, bool) {
	c.mu.Lock()
	s, ok := c.stamps[baseURL]
	c.mu.Unlock()
	if !ok {
		return ClockOffset{}, false
	}
	at := time.UnixMilli(s.ms)
	return ClockOffset{Min: at.Sub(s.got), Max: at.Sub(s.sent)}, true
}
