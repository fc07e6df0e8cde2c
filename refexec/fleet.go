package refexec

import (
	"fmt"
	"net/http"
	"strconv"
)

// Fleet is many reference executors behind one listener, executor i under
// /e/{i}/, for load tests that need a large pool without a process or a
// port per executor. Each is a Server of its own: its own fence, its own
// overlap count, its own instance ID.
type Fleet struct {
	Servers []*Server
	mux     *http.ServeMux
	opts    Options // with defaults, for Serve
}

// NewFleet returns n servers with the same options. When opts name an
// instance ID, executor i is "ID-i"; otherwise each gets a random one.
func NewFleet(n int, opts Options) (*Fleet, error) {
	if n < 1 {
		return nil, fmt.Errorf("refexec: a fleet needs at least 1 executor, got %d", n)
	}
	f := &Fleet{mux: http.NewServeMux()}
	for i := range n {
		o := opts
		if opts.InstanceID != "" {
			o.InstanceID = opts.InstanceID + "-" + strconv.Itoa(i)
		}
		s, err := New(o)
		if err != nil {
			return nil, err
		}
		prefix := FleetPath(i)
		f.mux.Handle(prefix+"/", http.StripPrefix(prefix, s))
		f.Servers = append(f.Servers, s)
	}
	f.opts = f.Servers[0].opts
	return f, nil
}

// FleetPath is the path under which executor i of a fleet answers.
func FleetPath(i int) string { return "/e/" + strconv.Itoa(i) }

// ServeHTTP implements http.Handler.
func (f *Fleet) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

// Stats adds up the fleet's counters.
func (f *Fleet) Stats() Stats {
	var total Stats
	for _, s := range f.Servers {
		st := s.Stats()
		total.Served += st.Served
		total.Passed += st.Passed
		total.Failed += st.Failed
		total.Errored += st.Errored
		total.Errors += st.Errors
		total.Timeout += st.Timeout
		total.Fenced += st.Fenced
		total.Preempted += st.Preempted
		total.Overlaps += st.Overlaps
		total.Busy += st.Busy
		total.LeaseExpired += st.LeaseExpired
		total.Extensions += st.Extensions
		total.Unauthorized += st.Unauthorized
		total.Forbidden += st.Forbidden
		total.FarFences += st.FarFences
		total.MaxFence = max(total.MaxFence, st.MaxFence)
		total.Running = total.Running || st.Running
	}
	return total
}
