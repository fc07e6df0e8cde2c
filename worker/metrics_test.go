package worker

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// scrapeSeries serves m's metrics over HTTP, scrapes them once, and counts
// the series of each evalpool_executor_* counter.
func scrapeSeries(t *testing.T, m *Metrics) map[string]int {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	series := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, _, ok := strings.Cut(sc.Text(), "{")
		if ok && strings.HasPrefix(name, "evalpool_executor_") && strings.HasSuffix(name, "_total") {
			series[name]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return series
}

// A scrape's size does not grow with the pool by default: after evals on
// every executor of pools of 2 and of 6, the per-executor counters have
// the pool's series only; with MetricsOptions.PerExecutor, one per
// executor.
func TestExecutorSeriesBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		executors   int
		perExecutor bool
		want        int // series of evalpool_executor_verdicts_total
	}{
		{"default, 2 executors", 2, false, 1},
		{"default, 6 executors", 6, false, 1},
		{"per executor, 2 executors", 2, true, 2},
		{"per executor, 6 executors", 6, true, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			execs := make([]refexec.Options, tc.executors)
			m := NewMetricsWith(MetricsOptions{PerExecutor: tc.perExecutor})
			// One eval at a time: each takes the executor idle longest, so
			// two rounds reach every executor.
			w, b := setup(t, Config{Concurrency: 1, Metrics: m}, execs...)
			start(t, w)
			ids := enqueueEvals(t, b, 2*tc.executors, tasks.EvalOptions{}, time.Minute)
			if completed, _ := evaltest.WaitEvalsDone(t, b.insp, len(ids), 60*time.Second); completed != len(ids) {
				t.Fatalf("%d of %d evals completed", completed, len(ids))
			}
			for i, s := range b.executors {
				if st := s.Stats(); st.Passed+st.Failed == 0 {
					t.Fatalf("executor %s ran no eval: the test does not reach every executor", b.urls[i])
				}
			}
			got := scrapeSeries(t, m)["evalpool_executor_verdicts_total"]
			if got != tc.want {
				t.Fatalf("%d series of evalpool_executor_verdicts_total after evals on %d executors, want %d", got, tc.executors, tc.want)
			}
		})
	}
}
