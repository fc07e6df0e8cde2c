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
// Max - Min is at most the round trip that brought it.
type ClockOffset struct {
	Min, Max time.Duration
}

// Mid is the middle of the range: the best guess of the offset.
func (o ClockOffset) Mid() time.Duration { return o.Min + (o.Max-o.Min)/2 }

// stamps is what a client knows of an executor's clock: two anchors, each
// an executor time stamp and the client's clock (wall and monotonic) on
// one side of the exchange that brought it. The stamp was written after
// the request went out and before the answer came, so the executor's clock
// is at least lo's stamp plus the time since its answer came, and at most
// hi's stamp plus the time since its request went out.
type stamps struct {
	lo, hi anchor
}

type anchor struct {
	ms int64
	at time.Time
}

// hiRefresh is how old the upper anchor may grow before any answer
// replaces it, tight or not: a clock that stepped back is followed.
const hiRefresh = time.Minute

// now returns the client's wall clock.
func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// learn keeps the executor's stamp of an answer, if it sent one. The lower
// anchor is always the last answer's: an answer is stamped as it is
// written, so the bound is as tight as its way back, however long the call
// ran. The upper anchor is replaced only by a tighter one, or once it is
// hiRefresh old or below the new lower bound (the clock stepped).
func (c *Client) learn(baseURL string, h http.Header, sent, got time.Time) {
	ms, err := strconv.ParseInt(h.Get(TimeHeader), 10, 64)
	if err != nil || ms <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clocks == nil {
		c.clocks = map[string]*stamps{}
	}
	lo, hi := anchor{ms, got}, anchor{ms + 1, sent} // the stamp is ms floored
	st, ok := c.clocks[baseURL]
	if !ok {
		c.clocks[baseURL] = &stamps{lo: lo, hi: hi}
		return
	}
	st.lo = lo
	old := st.hi.ms + got.Sub(st.hi.at).Milliseconds()
	if ms+1+got.Sub(sent).Milliseconds() <= old || got.Sub(st.hi.at) > hiRefresh || old < ms {
		st.hi = hi
	}
}

// execTime bounds the executor's wall clock at now, a reading of c.now(),
// in unix ms: lo is never later than it and hi never earlier, so lo dates
// a lease's start (a lease dated early ends early) and hi a deadline (a
// deadline that comes late at the executor never stops an eval before its
// caller gives up). The anchors are carried forward on the monotonic clock
// and widened by maxDrift, which makes the caller's wall clock irrelevant;
// with no stamp both are the caller's wall clock, as before executors told
// their time.
func (c *Client) execTime(baseURL string, now time.Time) (lo, hi int64) {
	c.mu.Lock()
	st, ok := c.clocks[baseURL]
	var s stamps
	if ok {
		s = *st
	}
	c.mu.Unlock()
	if !ok {
		return now.UnixMilli(), now.UnixMilli()
	}
	sinceLo, sinceHi := max(now.Sub(s.lo.at), 0), max(now.Sub(s.hi.at), 0)
	return s.lo.ms + (sinceLo - sinceLo/maxDrift).Milliseconds(),
		s.hi.ms + (sinceHi + sinceHi/maxDrift + time.Millisecond - 1).Milliseconds()
}

// Offset is what the client knows of the executor's clock against its own,
// and false when the executor never stamped an answer.
func (c *Client) Offset(baseURL string) (ClockOffset, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.clocks[baseURL]
	if !ok {
		return ClockOffset{}, false
	}
	return ClockOffset{Min: time.UnixMilli(st.lo.ms).Sub(st.lo.at), Max: time.UnixMilli(st.hi.ms).Sub(st.hi.at)}, true
}
